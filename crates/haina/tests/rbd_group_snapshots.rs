//! Group snapshots on a Ceph RBD pool (16.2), with data checks: mounted
//! members (frozen, some data only in the page cache) and an idle member
//! written through librbd *between* its snapshot and the RBD group snapshot
//! all restore to exactly one point in time; members are clones, never
//! copies; a member whose writes cannot be paused is refused; errors and
//! `kill -9` at any step converge with nothing left (images, RBD groups,
//! group snapshots, user snapshots on the sources).

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::path::Path;
use std::time::{Duration, Instant};

use haina_csi::v1 as csi;
use rbd::*;
use tonic::Code;

const AT: u64 = 8 << 20;

fn group_req(ceph: &Ceph, name: &str, vols: &[String]) -> csi::CreateVolumeGroupSnapshotRequest {
    csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: vols.to_vec(),
        secrets: ceph.secrets(),
        ..Default::default()
    }
}

fn from_snapshot(ceph: &Ceph, name: &str, snap: &str) -> csi::CreateVolumeRequest {
    let mut r = create(ceph, "ceph", name, 0, ext4());
    r.capacity_range = None;
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snap.into(),
            },
        )),
    });
    r
}

async fn new_volume(ceph: &Ceph, c: &mut common::Clients, name: &str) -> String {
    c.controller
        .create_volume(create(ceph, "ceph", name, 64 * MIB, ext4()))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// The member snapshot IDs a group snapshot named `group` of `vols` has
/// (or would have).
fn member_ids(group: &str, vols: &[String]) -> Vec<String> {
    use haina::ids::{ObjectId, PoolName, VolumeId};
    let pool = PoolName::parse("ceph").unwrap();
    vols.iter()
        .map(|v| {
            let v = VolumeId::parse_existing("v", v).unwrap();
            ObjectId::for_group_member(&pool, group, &v).to_string()
        })
        .collect()
}

/// The object part of an ID (`ceph.<object>`).
fn object(id: &str) -> &str {
    id.split_once('.').unwrap().1
}

/// Writes `text` at [`AT`] into a volume's image through librbd, as an
/// application on another client would (no filesystem).
fn write_raw(ceph: &Ceph, volume_id: &str, text: &str) {
    let img = ceph
        .connect()
        .open(&format!("csi-vol-{}", object(volume_id)))
        .unwrap();
    img.write_at(AT, text.as_bytes()).unwrap();
    img.flush().unwrap();
}

fn read_raw(ceph: &Ceph, volume_id: &str, len: usize) -> String {
    let img = ceph
        .connect()
        .open_read_only(&format!("csi-vol-{}", object(volume_id)))
        .unwrap();
    let mut buf = vec![0u8; len];
    img.read_at(AT, &mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn parent_of(ceph: &Ceph, image: &str) -> Option<String> {
    let img = ceph.connect().open_read_only(image).unwrap();
    img.parent_info()
        .unwrap()
        .map(|p| format!("{}@{}", p.image_name, p.snap_name))
}

/// Asserts nothing of the group snapshot named `group` (object
/// `group`) and its members is left in Ceph, and no user snapshot of it on
/// the sources.
fn assert_group_gone(ceph: &Ceph, group: &str, members: &[String], sources: &[String]) {
    let io = ceph.connect();
    let name = format!("csi-group-{group}");
    assert!(
        !io.group_list().unwrap().contains(&name),
        "RBD group {name} left"
    );
    assert!(
        ceph.images_with(&name).is_empty(),
        "record image {name} left"
    );
    for m in members {
        let left = ceph.images_with(&format!("csi-snap-{}", object(m)));
        assert!(left.is_empty(), "member images left: {left:?}");
    }
    for s in sources {
        let image = format!("csi-vol-{}", object(s));
        if let Ok(img) = io.open_read_only(&image) {
            let snaps: Vec<String> = img
                .snap_list()
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect();
            assert!(
                !snaps
                    .iter()
                    .any(|s| s.contains("csi-group-") || s.starts_with(".group.")),
                "snapshots left on {image}: {snaps:?}"
            );
        }
    }
}

async fn list_members(ceph: &Ceph, c: &mut common::Clients, group_id: &str) -> usize {
    c.controller
        .list_snapshots(csi::ListSnapshotsRequest {
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .filter(|e| e.snapshot.as_ref().unwrap().group_snapshot_id == group_id)
        .count()
}

async fn delete_group(
    ceph: &Ceph,
    c: &mut common::Clients,
    id: &str,
    ids: &[String],
) -> Result<tonic::Response<csi::DeleteVolumeGroupSnapshotResponse>, tonic::Status> {
    c.group
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: id.into(),
            snapshot_ids: ids.to_vec(),
            secrets: ceph.secrets(),
        })
        .await
}

async fn wait_for(flag: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !flag.exists() {
        assert!(
            Instant::now() < deadline,
            "never paused at {}",
            flag.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_group_snapshot_restores_every_member_at_one_point_in_time() {
    let Some(ceph) = Ceph::from_env("rbd_group_snapshot_restores_every_member") else {
        return;
    };
    let pause = tempfile::tempdir().unwrap();
    let plugin = Plugin::start_full(
        &ceph,
        "controller,node",
        &[
            ("HAINA_FAILPOINTS", "rbd-group-point=pause"),
            ("HAINA_FAILPOINT_DIR", pause.path().to_str().unwrap()),
        ],
        PluginConfig::Keyring,
    )
    .await;
    let mut c = plugin.clients().await;
    // Two mounted members (frozen), one idle member written through librbd.
    let mut vols = Vec::new();
    let mut mounts = Vec::new();
    for i in 0..2 {
        let v = new_volume(&ceph, &mut c, &plugin.unique(&format!("gm{i}"))).await;
        let m = publish_and_mount(&ceph, &mut c, &plugin, &v, &ext4(), &format!("gm{i}"))
            .await
            .unwrap();
        common::write_synced(&m.target.join("synced"), &format!("synced {i}"));
        std::fs::write(m.target.join("unsynced"), format!("page cache {i}")).unwrap();
        vols.push(v);
        mounts.push(m);
    }
    let idle = new_volume(&ceph, &mut c, &plugin.unique("gidle")).await;
    write_raw(&ceph, &idle, "v1: before its snapshot");
    vols.push(idle.clone());

    // Paused after the sources' snapshots, before the RBD group snapshot:
    // a write now is after the idle member's snapshot, but before the
    // group's point in time, so it must be in the restore.
    let group_name = plugin.unique("grp");
    let mut gc = c.group.clone();
    let req = group_req(&ceph, &group_name, &vols);
    let create = tokio::spawn(async move { gc.create_volume_group_snapshot(req).await });
    let flag = pause.path().join("rbd-group-point.paused");
    wait_for(&flag).await;
    write_raw(&ceph, &idle, "v2: before the point in time");
    std::fs::remove_file(&flag).unwrap();
    let g = create
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", plugin.logs()))
        .into_inner()
        .group_snapshot
        .unwrap();
    write_raw(&ceph, &idle, "v3: after the point in time");
    for (i, m) in mounts.iter().enumerate() {
        common::write_synced(&m.target.join("synced"), &format!("changed {i}"));
        common::write_synced(&m.target.join("after"), "after");
    }
    assert!(g.ready_to_use);
    assert_eq!(g.snapshots.len(), 3);
    for s in &g.snapshots {
        assert_eq!(s.group_snapshot_id, g.group_snapshot_id);
        assert_eq!(s.size_bytes, 64 * MIB);
        assert_eq!(s.creation_time, g.creation_time);
    }
    let ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    let mut sorted = vols.clone();
    sorted.sort();
    assert_eq!(ids, member_ids(&group_name, &sorted));
    let group_object = object(&g.group_snapshot_id).to_string();

    // Members are clones of their sources; nothing of the making is left.
    for s in &g.snapshots {
        let parent = parent_of(&ceph, &format!("csi-snap-{}", object(&s.snapshot_id)));
        assert!(
            parent.as_deref().is_some_and(
                |p| p.starts_with(&format!("csi-vol-{}@", object(&s.source_volume_id)))
            ),
            "{parent:?}"
        );
    }
    assert!(
        !ceph
            .connect()
            .group_list()
            .unwrap()
            .contains(&format!("csi-group-{group_object}"))
    );

    // Idempotent; another member set is a conflict; members are snapshots.
    let again = c
        .group
        .create_volume_group_snapshot(group_req(&ceph, &group_name, &vols))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(again, g);
    common::expect_code(
        c.group
            .create_volume_group_snapshot(group_req(&ceph, &group_name, &vols[..2]))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(list_members(&ceph, &mut c, &g.group_snapshot_id).await, 3);
    let got = c
        .group
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            snapshot_ids: ids.clone(),
            secrets: ceph.secrets(),
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got, g);
    let m = common::expect_code(
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: ids[2].clone(),
                secrets: ceph.secrets(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(m.contains(&g.group_snapshot_id), "{m}");

    // Every member restores to the group's point in time.
    let mut restored = Vec::new();
    for (i, s) in g.snapshots.iter().enumerate() {
        let name = plugin.unique(&format!("gr{i}"));
        let r = c
            .controller
            .create_volume(from_snapshot(&ceph, &name, &s.snapshot_id))
            .await
            .unwrap_or_else(|e| panic!("restore {}: {e}", s.snapshot_id))
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        assert_eq!(
            parent_of(&ceph, &format!("csi-vol-{name}")),
            Some(format!("csi-snap-{}@haina-restore", object(&s.snapshot_id)))
        );
        if s.source_volume_id == idle {
            assert_eq!(read_raw(&ceph, &r, 28), "v2: before the point in time");
        } else {
            let at = vols.iter().position(|v| *v == s.source_volume_id).unwrap();
            let m = publish_and_mount(&ceph, &mut c, &plugin, &r, &ext4(), &format!("gr{i}"))
                .await
                .unwrap();
            let read = |f: &str| std::fs::read_to_string(m.target.join(f)).ok();
            assert_eq!(read("synced"), Some(format!("synced {at}")));
            assert_eq!(read("unsynced"), Some(format!("page cache {at}")));
            assert_eq!(read("after"), None, "written after the group snapshot");
            unmount_on(&plugin, &m).await;
            unpublish(&ceph, &mut c, &r, &plugin.node_id).await;
        }
        restored.push(r);
    }

    for (m, v) in mounts.iter().zip(&vols) {
        unmount_on(&plugin, m).await;
        unpublish(&ceph, &mut c, v, &plugin.node_id).await;
    }
    for v in restored.iter().chain(&vols) {
        delete(&ceph, &mut c, v).await;
    }
    for _ in 0..2 {
        delete_group(&ceph, &mut c, &g.group_snapshot_id, &ids)
            .await
            .unwrap();
    }
    common::expect_code(
        c.group
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id.clone(),
                snapshot_ids: ids.clone(),
                secrets: ceph.secrets(),
            })
            .await,
        Code::NotFound,
    );
    assert_group_gone(&ceph, &group_object, &ids, &vols);
    let left = ceph.images_with(&plugin.unique(""));
    assert!(left.is_empty(), "images left: {left:?}");
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_group_snapshot_refuses_a_member_it_cannot_pause() {
    let Some(ceph) = Ceph::from_env("rbd_group_snapshot_refuses_a_member_it_cannot_pause") else {
        return;
    };
    let plugin = Plugin::start_full(&ceph, "controller,node", &[], PluginConfig::Keyring).await;
    let mut c = plugin.clients().await;
    let idle = new_volume(&ceph, &mut c, &plugin.unique("pidle")).await;
    let blk = new_volume(&ceph, &mut c, &plugin.unique("pblk")).await;
    // A raw block attachment: its FUSE server holds the exclusive lock, and
    // there is no filesystem to freeze.
    let bcap = common::block_cap(common::Mode::SingleNodeWriter);
    let m = publish_and_mount(&ceph, &mut c, &plugin, &blk, &bcap, "pblk")
        .await
        .unwrap();
    let vols = vec![idle.clone(), blk.clone()];
    let group_name = plugin.unique("pgrp");
    let msg = common::expect_code(
        c.group
            .create_volume_group_snapshot(group_req(&ceph, &group_name, &vols))
            .await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains(&blk) && msg.contains("lock"), "{msg}");
    assert_group_gone(&ceph, &group_name, &member_ids(&group_name, &vols), &vols);

    // Detached, both can be paused (by the RBD group snapshot).
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &blk, &plugin.node_id).await;
    let g = c
        .group
        .create_volume_group_snapshot(group_req(&ceph, &group_name, &vols))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", plugin.logs()))
        .into_inner()
        .group_snapshot
        .unwrap();
    let ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    delete_group(&ceph, &mut c, &g.group_snapshot_id, &ids)
        .await
        .unwrap();
    for v in &vols {
        delete(&ceph, &mut c, v).await;
    }
    assert_group_gone(&ceph, object(&g.group_snapshot_id), &ids, &vols);
    let left = ceph.images_with(&plugin.unique(""));
    assert!(left.is_empty(), "images left: {left:?}");
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_group_snapshot_errors_and_kill_9_converge() {
    let Some(ceph) = Ceph::from_env("rbd_group_snapshot_errors_and_kill_9_converge") else {
        return;
    };
    let mut p = Plugin::start_full(
        &ceph,
        "controller,node",
        &[("HAINA_FAILPOINTS", "group-member-1=error")],
        PluginConfig::Keyring,
    )
    .await;
    let mut c = p.clients().await;
    let mounted = new_volume(&ceph, &mut c, &p.unique("km")).await;
    let m = publish_and_mount(&ceph, &mut c, &p, &mounted, &ext4(), "km")
        .await
        .unwrap();
    common::write_synced(&m.target.join("data"), "mounted");
    let idle = new_volume(&ceph, &mut c, &p.unique("ki")).await;
    write_raw(&ceph, &idle, "idle");
    let vols = vec![mounted.clone(), idle.clone()];

    // A member fails after the first is made: all or none.
    let name = p.unique("kgrp");
    let msg = common::expect_code(
        c.group
            .create_volume_group_snapshot(group_req(&ceph, &name, &vols))
            .await,
        Code::Internal,
    );
    assert!(msg.contains("group-member-1"), "{msg}");
    assert_group_gone(&ceph, &name, &member_ids(&name, &vols), &vols);

    // kill -9 inside the freeze window (the mounted member stays frozen),
    // then after the point in time, between two members, then after the
    // commit (the RBD group holding the point in time is still there).
    for (n, point) in [
        "rbd-group-point=abort",
        "group-member-1=abort",
        "rbd-group-committed=abort",
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("p{n}");
        p.stop();
        p.env = vec![("HAINA_FAILPOINTS".into(), point.into())];
        p.spawn().await;
        let mut c = p.clients().await;
        let group = format!("{name}-{}", tag);
        assert!(
            c.group
                .create_volume_group_snapshot(group_req(&ceph, &group, &vols))
                .await
                .is_err()
        );
        p.wait_exit();
        p.env.clear();
        p.spawn().await;
        let mut c = p.clients().await;
        let g = c
            .group
            .create_volume_group_snapshot(group_req(&ceph, &group, &vols))
            .await
            .unwrap_or_else(|e| panic!("retry after {point}: {e}\n{}", p.logs()))
            .into_inner()
            .group_snapshot
            .unwrap();
        // Thawed: the mounted member takes writes again.
        let after = format!("after-{}", tag);
        let path = m.target.join(&after);
        let w = tokio::task::spawn_blocking(move || common::write_synced(&path, "after"));
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("the filesystem was left frozen")
            .unwrap();
        let ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
        // The point in time is taken: its RBD group (which pins a snapshot
        // of every source) is gone.
        let point_group = format!("csi-group-{}", object(&g.group_snapshot_id));
        assert!(
            !ceph.connect().group_list().unwrap().contains(&point_group),
            "RBD group {point_group} left after the retry of {point}"
        );
        let mut sorted = vols.clone();
        sorted.sort();
        assert_eq!(ids, member_ids(&group, &sorted));
        for (i, s) in g.snapshots.iter().enumerate() {
            let rname = p.unique(&format!("kr{i}-{}", tag));
            let r = c
                .controller
                .create_volume(from_snapshot(&ceph, &rname, &s.snapshot_id))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id;
            if s.source_volume_id == idle {
                assert_eq!(read_raw(&ceph, &r, 4), "idle");
            } else {
                let rm = publish_and_mount(&ceph, &mut c, &p, &r, &ext4(), &rname)
                    .await
                    .unwrap();
                assert_eq!(
                    std::fs::read_to_string(rm.target.join("data"))
                        .ok()
                        .as_deref(),
                    Some("mounted")
                );
                assert!(!rm.target.join(&after).exists());
                unmount_on(&p, &rm).await;
                unpublish(&ceph, &mut c, &r, &p.node_id).await;
            }
            delete(&ceph, &mut c, &r).await;
        }

        // kill -9 in the delete, after the group went out of sight.
        p.stop();
        p.env = vec![(
            "HAINA_FAILPOINTS".into(),
            "rbd-group-delete-between=abort".into(),
        )];
        p.spawn().await;
        let mut c = p.clients().await;
        assert!(
            delete_group(&ceph, &mut c, &g.group_snapshot_id, &ids)
                .await
                .is_err()
        );
        p.wait_exit();
        p.env.clear();
        p.spawn().await;
        let mut c = p.clients().await;
        assert_eq!(list_members(&ceph, &mut c, &g.group_snapshot_id).await, 0);
        delete_group(&ceph, &mut c, &g.group_snapshot_id, &ids)
            .await
            .unwrap();
        assert_group_gone(&ceph, object(&g.group_snapshot_id), &ids, &vols);
    }

    let mut c = p.clients().await;
    unmount_on(&p, &m).await;
    unpublish(&ceph, &mut c, &mounted, &p.node_id).await;
    for v in &vols {
        delete(&ceph, &mut c, v).await;
    }
    let left = ceph.images_with(&p.unique(""));
    assert!(left.is_empty(), "images left: {left:?}");
    p.assert_no_leaks();
}
