//! Group snapshots on local pools, with real filesystems: every member of
//! a group snapshot restores with exactly the data written before it (also
//! what sat unsynced in the page cache), on a sparse-copy and on a reflink
//! pool; idempotency by name; the spec's error table; all or none when a
//! member fails; `kill -9` in the middle of a create or a delete, then a
//! retry, converges with nothing leaked (and no filesystem left frozen).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use haina_csi::v1 as csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn group_req(name: &str, vols: &[String]) -> csi::CreateVolumeGroupSnapshotRequest {
    csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: vols.to_vec(),
        ..Default::default()
    }
}

fn from_snapshot(name: &str, cap: csi::VolumeCapability, snap: &str) -> csi::CreateVolumeRequest {
    let mut r = create_req(name, 0, cap);
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

async fn create_in(
    c: &mut Clients,
    pool: &str,
    name: &str,
    bytes: i64,
    cap: &csi::VolumeCapability,
) -> String {
    let mut r = create_req(name, bytes, cap.clone());
    r.parameters = params(&[("pool", pool)]);
    c.controller
        .create_volume(r)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

async fn delete_group(
    c: &mut Clients,
    id: &str,
    ids: &[String],
) -> Result<tonic::Response<csi::DeleteVolumeGroupSnapshotResponse>, tonic::Status> {
    c.group
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: id.into(),
            snapshot_ids: ids.to_vec(),
            ..Default::default()
        })
        .await
}

async fn get_group(
    c: &mut Clients,
    id: &str,
    ids: &[String],
) -> Result<tonic::Response<csi::GetVolumeGroupSnapshotResponse>, tonic::Status> {
    c.group
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: id.into(),
            snapshot_ids: ids.to_vec(),
            ..Default::default()
        })
        .await
}

async fn list_snapshots(c: &mut Clients) -> Vec<csi::Snapshot> {
    c.controller
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.snapshot.unwrap())
        .collect()
}

/// What group snapshots keep in a pool: member images and records, temp
/// images, group records.
fn group_files(pool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["snapshots", "groups"] {
        for ext in ["img", "tmp", "json"] {
            out.extend(files_with_ext(&pool.join(dir), ext));
        }
    }
    out
}

/// Writes `text` to `path` on a blocking thread, failing if it does not
/// finish within 20 s (a filesystem left frozen blocks it forever).
async fn write_not_frozen(path: PathBuf, text: &'static str) {
    let w = tokio::task::spawn_blocking(move || write_synced(&path, text));
    tokio::time::timeout(Duration::from_secs(20), w)
        .await
        .expect("the filesystem was left frozen")
        .unwrap();
}

fn member_ids(g: &csi::VolumeGroupSnapshot) -> Vec<String> {
    g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect()
}

/// Three mounted volumes with synced and unsynced data, a group snapshot,
/// more writes, then a restore of every member: each holds exactly what was
/// written before the snapshot. Also idempotency, ALREADY_EXISTS, the
/// members as snapshots, DeleteSnapshot of a member, Get/Delete with
/// `snapshot_ids`, and nothing left after the delete.
async fn restore_every_member(
    server: &Server,
    pool: &str,
    pool_dir: &Path,
    cap: &csi::VolumeCapability,
    size: i64,
) {
    let mut c = server.clients().await;
    let mut vols = Vec::new();
    let mut mnts = Vec::new();
    for i in 0..3 {
        let v = create_in(&mut c, pool, &format!("m{i}"), size, cap).await;
        let mnt = mount_volume(&mut c, server, &v, cap, &format!("m{i}")).await;
        write_synced(&mnt.join("synced"), &format!("synced {i}"));
        // In the page cache only: the freeze flushes it into the snapshot.
        std::fs::write(mnt.join("unsynced"), format!("page cache {i}")).unwrap();
        vols.push(v);
        mnts.push(mnt);
    }

    let g = c
        .group
        .create_volume_group_snapshot(group_req("g1", &vols))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()))
        .into_inner()
        .group_snapshot
        .unwrap();
    for (i, mnt) in mnts.iter().enumerate() {
        write_synced(&mnt.join("synced"), &format!("changed {i}"));
        write_synced(&mnt.join("after"), "after the snapshot");
    }
    assert!(g.ready_to_use);
    assert_eq!(g.snapshots.len(), 3);
    let sources: BTreeSet<&str> = g
        .snapshots
        .iter()
        .map(|s| s.source_volume_id.as_str())
        .collect();
    assert_eq!(sources, vols.iter().map(String::as_str).collect());
    for s in &g.snapshots {
        assert_eq!(s.group_snapshot_id, g.group_snapshot_id);
        assert!(s.ready_to_use);
        assert_eq!(s.size_bytes, size);
        assert_eq!(s.creation_time, g.creation_time);
    }
    let ids = member_ids(&g);

    // Idempotent by name (in any order); another member set is a conflict.
    let mut reversed = vols.clone();
    reversed.reverse();
    let again = c
        .group
        .create_volume_group_snapshot(group_req("g1", &reversed))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(again.group_snapshot_id, g.group_snapshot_id);
    assert_eq!(member_ids(&again), ids);
    let m = expect_code(
        c.group
            .create_volume_group_snapshot(group_req("g1", &vols[..2]))
            .await,
        Code::AlreadyExists,
    );
    assert!(m.contains(&vols[2]), "{m}");

    // The members are snapshots, carrying their group's ID.
    let listed = list_snapshots(&mut c).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|s| s.group_snapshot_id == g.group_snapshot_id)
    );
    let one = c
        .controller
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: ids[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(one.group_snapshot_id, g.group_snapshot_id);
    let got = get_group(&mut c, &g.group_snapshot_id, &ids)
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got, g);
    let m = expect_code(
        get_group(&mut c, &g.group_snapshot_id, &ids[..2]).await,
        Code::InvalidArgument,
    );
    assert!(m.contains("snapshot_ids") && m.contains("missing"), "{m}");
    let m = expect_code(
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: ids[0].clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(m.contains(&g.group_snapshot_id), "{m}");

    // A source goes; its member still restores. Every member holds exactly
    // what was written before the group snapshot.
    unmount_volume(&mut c, server, &vols[0], "m0").await;
    delete_volume(&mut c, &vols[0]).await;
    for (i, s) in g.snapshots.iter().enumerate() {
        let at = vols.iter().position(|v| *v == s.source_volume_id).unwrap();
        let r = c
            .controller
            .create_volume(from_snapshot(&format!("r{i}"), cap.clone(), &s.snapshot_id))
            .await
            .unwrap_or_else(|e| panic!("restore of {}: {e}", s.snapshot_id))
            .into_inner()
            .volume
            .unwrap();
        let rmnt = mount_volume(&mut c, server, &r.volume_id, cap, &format!("r{i}")).await;
        assert_eq!(
            std::fs::read_to_string(rmnt.join("synced")).unwrap(),
            format!("synced {at}")
        );
        assert_eq!(
            std::fs::read_to_string(rmnt.join("unsynced")).unwrap(),
            format!("page cache {at}")
        );
        assert!(
            !rmnt.join("after").exists(),
            "data written after the group snapshot is in member {i}"
        );
        unmount_volume(&mut c, server, &r.volume_id, &format!("r{i}")).await;
        delete_volume(&mut c, &r.volume_id).await;
    }
    for (i, v) in vols.iter().enumerate().skip(1) {
        unmount_volume(&mut c, server, v, &format!("m{i}")).await;
        delete_volume(&mut c, v).await;
    }

    // Delete checks snapshot_ids first, then removes every member.
    let m = expect_code(
        delete_group(&mut c, &g.group_snapshot_id, &[ids[0].clone()]).await,
        Code::InvalidArgument,
    );
    assert!(m.contains("snapshot_ids"), "{m}");
    assert_eq!(list_snapshots(&mut c).await.len(), 3);
    for _ in 0..2 {
        delete_group(&mut c, &g.group_snapshot_id, &ids)
            .await
            .unwrap();
    }
    expect_code(
        get_group(&mut c, &g.group_snapshot_id, &ids).await,
        Code::NotFound,
    );
    assert!(list_snapshots(&mut c).await.is_empty());
    let left = group_files(pool_dir);
    assert!(left.is_empty(), "left behind: {left:?}");
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn group_snapshot_restores_every_member_on_a_sparse_copy_pool() {
    let server = Server::start().await;
    let pool = server.data_dir().join("pools/default");
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    restore_every_member(&server, "default", &pool, &cap, 32 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_snapshot_restores_every_member_on_a_reflink_pool() {
    let scratch = ScratchFs::new(2048, &["mkfs.xfs", "-q", "-m", "reflink=1"]);
    let pool = scratch.mount.join("pool");
    let config = format!(
        "[pools.fast]\nkind = \"local\"\npath = \"{}\"\n",
        pool.display()
    );
    let server = Server::start_with_config(&[], &config).await;
    assert!(server.logs().contains("reflink"), "{}", server.logs());
    let cap = mount_cap("xfs", Mode::SingleNodeWriter);
    restore_every_member(&server, "fast", &pool, &cap, 300 * MIB).await;
    assert!(files_with_ext(&pool, "img").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn group_controller_error_table() {
    let config = "default_pool = \"default\"\n[pools.default]\nkind = \"local\"\n[pools.other]\nkind = \"local\"\n";
    let server = Server::start_with_config(&[], config).await;
    let mut c = server.clients().await;

    // Advertised: the service, and its one capability.
    use csi::plugin_capability::{Type, service};
    let caps = c
        .identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.iter().any(|cap| matches!(cap.r#type,
        Some(Type::Service(ref s)) if s.r#type == service::Type::GroupControllerService as i32)));
    let gcaps = c
        .group
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use csi::group_controller_service_capability::{Type as GType, rpc::Type as Rpc};
    let rpcs: Vec<i32> = gcaps
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(GType::Rpc(r)) => r.r#type,
            None => -1,
        })
        .collect();
    assert_eq!(rpcs, [Rpc::CreateDeleteGetVolumeGroupSnapshot as i32]);

    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let a = create_in(&mut c, "default", "a", 8 * MIB, &cap).await;
    let b = create_in(&mut c, "default", "b", 8 * MIB, &cap).await;
    let o = create_in(&mut c, "other", "o", 8 * MIB, &cap).await;
    let cases: Vec<(csi::CreateVolumeGroupSnapshotRequest, Code, &str)> = vec![
        (
            group_req("", std::slice::from_ref(&a)),
            Code::InvalidArgument,
            "name",
        ),
        (
            group_req("g", &[]),
            Code::InvalidArgument,
            "source_volume_ids",
        ),
        (
            group_req("g\u{1}", std::slice::from_ref(&a)),
            Code::InvalidArgument,
            "name",
        ),
        (
            group_req("g", &[a.clone(), "default.missing".into()]),
            Code::NotFound,
            "source_volume_ids[1]",
        ),
        (
            group_req("g", &["fake-vol-id".into()]),
            Code::NotFound,
            "source_volume_ids[0]",
        ),
        (
            group_req("g", &[a.clone(), "a/../b".into()]),
            Code::InvalidArgument,
            "source_volume_ids[1]",
        ),
        (
            group_req("g", &[a.clone(), b.clone(), a.clone()]),
            Code::InvalidArgument,
            "source_volume_ids[2]",
        ),
        (
            group_req("g", &[a.clone(), o.clone()]),
            Code::FailedPrecondition,
            "one pool",
        ),
        (
            csi::CreateVolumeGroupSnapshotRequest {
                parameters: params(&[("consistency", "crash")]),
                ..group_req("g", std::slice::from_ref(&a))
            },
            Code::InvalidArgument,
            "consistency",
        ),
    ];
    for (req, code, names) in cases {
        let m = expect_code(c.group.create_volume_group_snapshot(req).await, code);
        assert!(m.contains(names), "{code:?}: {m}");
    }
    // The same name in another pool is the same group name.
    let g = c
        .group
        .create_volume_group_snapshot(group_req("same", std::slice::from_ref(&o)))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    expect_code(
        c.group
            .create_volume_group_snapshot(group_req("same", &[a.clone(), b.clone()]))
            .await,
        Code::AlreadyExists,
    );

    // Get: required, unknown is NOT_FOUND. Delete: required, unknown is OK.
    expect_code(get_group(&mut c, "", &[]).await, Code::InvalidArgument);
    for unknown in ["fake-vol-id", "default.never", "nopool.x"] {
        expect_code(get_group(&mut c, unknown, &[]).await, Code::NotFound);
        delete_group(&mut c, unknown, &[]).await.unwrap();
    }
    expect_code(delete_group(&mut c, "", &[]).await, Code::InvalidArgument);
    // snapshot_ids are checked once the group is found.
    let ids = member_ids(&g);
    expect_code(
        get_group(&mut c, &g.group_snapshot_id, &[]).await,
        Code::InvalidArgument,
    );
    expect_code(
        delete_group(&mut c, &g.group_snapshot_id, &[]).await,
        Code::InvalidArgument,
    );
    delete_group(&mut c, &g.group_snapshot_id, &ids)
        .await
        .unwrap();

    // A member attached as a raw block device cannot be paused: refused,
    // and nothing is left.
    let bcap = block_cap(Mode::SingleNodeWriter);
    let blk = create_in(&mut c, "default", "blk", 8 * MIB, &bcap).await;
    mount_volume(&mut c, &server, &blk, &bcap, "blk").await;
    let m = expect_code(
        c.group
            .create_volume_group_snapshot(group_req("with-block", &[a.clone(), blk.clone()]))
            .await,
        Code::FailedPrecondition,
    );
    assert!(m.contains(&blk) && m.contains("unstage"), "{m}");
    let pool = server.data_dir().join("pools/default");
    assert!(group_files(&pool).is_empty(), "{:?}", group_files(&pool));
    unmount_volume(&mut c, &server, &blk, "blk").await;
    for v in [&a, &b, &o, &blk] {
        delete_volume(&mut c, v).await;
    }
    server.assert_no_leaks();

    // A node-only plugin serves no GroupController.
    let node = Server::start_with(&[("HAINA_SERVICES", "node")]).await;
    let mut n = node.clients().await;
    let caps = n
        .identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!caps.capabilities.iter().any(|cap| matches!(cap.r#type,
        Some(Type::Service(ref s)) if s.r#type == service::Type::GroupControllerService as i32)));
    expect_code(
        n.group
            .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
            .await,
        Code::Unimplemented,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_member_leaves_nothing_and_thaws_every_filesystem() {
    let server = Server::start_with(&[("HAINA_FAILPOINTS", "group-member-1=error")]).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut vols = Vec::new();
    let mut mnts = Vec::new();
    for i in 0..3 {
        let v = create_in(&mut c, "default", &format!("f{i}"), 16 * MIB, &cap).await;
        mnts.push(mount_volume(&mut c, &server, &v, &cap, &format!("f{i}")).await);
        vols.push(v);
    }
    let m = expect_code(
        c.group
            .create_volume_group_snapshot(group_req("fails", &vols))
            .await,
        Code::Internal,
    );
    assert!(m.contains("group-member-1"), "{m}");
    for mnt in &mnts {
        write_not_frozen(mnt.join("after-failure"), "thawed").await;
    }
    // All or none: the first member's copy is gone too.
    let pool = server.data_dir().join("pools/default");
    assert!(group_files(&pool).is_empty(), "{:?}", group_files(&pool));
    assert!(list_snapshots(&mut c).await.is_empty());
    for (i, v) in vols.iter().enumerate() {
        unmount_volume(&mut c, &server, v, &format!("f{i}")).await;
        delete_volume(&mut c, v).await;
    }
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_a_group_snapshot_or_its_delete_then_retries_converge() {
    let mut server = Server::start_with(&[("HAINA_FAILPOINTS", "group-member-1=abort")]).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut vols = Vec::new();
    let mut mnts = Vec::new();
    for i in 0..3 {
        let v = create_in(&mut c, "default", &format!("k{i}"), 16 * MIB, &cap).await;
        let mnt = mount_volume(&mut c, &server, &v, &cap, &format!("k{i}")).await;
        write_synced(&mnt.join("data"), &format!("volume {i}"));
        mnts.push(mnt);
        vols.push(v);
    }
    // Killed after the first member's copy, every filesystem still frozen.
    let r = c
        .group
        .create_volume_group_snapshot(group_req("crash", &vols))
        .await;
    assert!(r.is_err(), "the server should have died: {r:?}");
    server.wait_exit();
    server.spawn_with_env(Vec::new()).await;
    let mut c = server.clients().await;
    // Nothing of the interrupted group is visible.
    assert!(list_snapshots(&mut c).await.is_empty());
    let pool = server.data_dir().join("pools/default");
    assert!(!group_files(&pool).is_empty(), "the crash left no journal");

    // The retry converges: all members, one point in time, filesystems thawed.
    let g = c
        .group
        .create_volume_group_snapshot(group_req("crash", &vols))
        .await
        .unwrap_or_else(|e| panic!("retry: {e}\n{}", server.logs()))
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(g.snapshots.len(), 3);
    for mnt in &mnts {
        write_not_frozen(mnt.join("data"), "after").await;
    }
    for (i, s) in g.snapshots.iter().enumerate() {
        let at = vols.iter().position(|v| *v == s.source_volume_id).unwrap();
        let r = c
            .controller
            .create_volume(from_snapshot(
                &format!("kr{i}"),
                cap.clone(),
                &s.snapshot_id,
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let rmnt = mount_volume(&mut c, &server, &r.volume_id, &cap, &format!("kr{i}")).await;
        assert_eq!(
            std::fs::read_to_string(rmnt.join("data")).unwrap(),
            format!("volume {at}")
        );
        unmount_volume(&mut c, &server, &r.volume_id, &format!("kr{i}")).await;
        delete_volume(&mut c, &r.volume_id).await;
    }

    // Killed between the delete's record and its members: the retry finishes.
    server.stop();
    server
        .spawn_with_env(vec![(
            "HAINA_FAILPOINTS".into(),
            "group-delete-between=abort".into(),
        )])
        .await;
    let mut c = server.clients().await;
    let ids = member_ids(&g);
    assert!(
        delete_group(&mut c, &g.group_snapshot_id, &ids)
            .await
            .is_err()
    );
    server.wait_exit();
    server.spawn_with_env(Vec::new()).await;
    let mut c = server.clients().await;
    // The group vanished with its record; its members with it.
    assert!(list_snapshots(&mut c).await.is_empty());
    expect_code(
        get_group(&mut c, &g.group_snapshot_id, &ids).await,
        Code::NotFound,
    );
    delete_group(&mut c, &g.group_snapshot_id, &ids)
        .await
        .unwrap();
    assert!(group_files(&pool).is_empty(), "{:?}", group_files(&pool));
    for (i, v) in vols.iter().enumerate() {
        unmount_volume(&mut c, &server, v, &format!("k{i}")).await;
        delete_volume(&mut c, v).await;
    }
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_snapshot_reserves_every_member_or_nothing() {
    use std::io::Write;
    let scratch = ScratchFs::new(256, &["mkfs.ext4", "-q"]);
    let pool = scratch.mount.join("pool");
    let config = format!(
        "[pools.small]\nkind = \"local\"\npath = \"{}\"\n",
        pool.display()
    );
    let server = Server::start_with_config(&[], &config).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut vols = Vec::new();
    for name in ["a", "b"] {
        vols.push(create_in(&mut c, "small", name, 70 * MIB, &cap).await);
        // 40 MiB written into the volume: a snapshot of it costs that much.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(pool.join(format!("volumes/{name}.img")))
            .unwrap();
        f.write_all(&vec![7u8; 40 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let free = scratch.free();
    // One member alone fits (an ordinary snapshot of it does)...
    let single = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "alone".into(),
            source_volume_id: vols[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .snapshot
        .unwrap();
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: single.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    // ...but not both: refused before anything is copied, though the
    // filesystem itself still has room for the copies (which would eat
    // the space the volumes were promised).
    let m = expect_code(
        c.group
            .create_volume_group_snapshot(group_req("both", &vols))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        m.contains("group snapshot") && m.contains("2 volumes"),
        "{m}"
    );
    assert!(free > 100 << 20, "the copies would fit: {free} bytes free");
    assert!(group_files(&pool).is_empty(), "{:?}", group_files(&pool));
    assert!(scratch.free() + (1 << 20) >= free);
    for v in &vols {
        delete_volume(&mut c, v).await;
    }
    server.assert_no_leaks();
}
