//! Snapshots, restores, clones and expansion on local pools, with real
//! filesystems: data written before a snapshot is in the restore, data
//! written after is not; reflink pools copy in constant space; a frozen
//! filesystem is always thawed; growth shows up in statvfs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use haina_csi::v1 as csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn from_snapshot(
    name: &str,
    size: i64,
    cap: csi::VolumeCapability,
    snap: &str,
) -> csi::CreateVolumeRequest {
    let mut r = create_req(name, size, cap);
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snap.into(),
            },
        )),
    });
    r
}

fn from_volume(
    name: &str,
    size: i64,
    cap: csi::VolumeCapability,
    vol: &str,
) -> csi::CreateVolumeRequest {
    let mut r = create_req(name, size, cap);
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: vol.into(),
            },
        )),
    });
    r
}

fn snapshot_req(name: &str, source: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn statvfs_total(p: &std::path::Path) -> u64 {
    let st = rustix::fs::statvfs(p).unwrap();
    st.f_blocks * st.f_frsize
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_restore_and_clone_on_a_sparse_copy_pool() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let src = c
        .controller
        .create_volume(create_req("src", 64 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        src.volume_context.get("copyMethod").map(String::as_str),
        Some("sparse")
    );
    let mnt = mount_volume(&mut c, &server, &src.volume_id, &cap, "src").await;
    write_synced(&mnt.join("before"), "before the snapshot");

    // The source is mounted: the snapshot freezes it around the copy.
    let snap = c
        .controller
        .create_snapshot(snapshot_req("snap1", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 64 * MIB);
    assert_eq!(snap.source_volume_id, src.volume_id);
    let t = snap.creation_time.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - t.seconds).abs() < 60, "creation_time {t:?}");
    write_synced(&mnt.join("after"), "after the snapshot");

    // Idempotent by name; the same name for another source is a conflict.
    let again = c
        .controller
        .create_snapshot(snapshot_req("snap1", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let other = c
        .controller
        .create_volume(create_req("other", 8 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    expect_code(
        c.controller
            .create_snapshot(snapshot_req("snap1", &other.volume_id))
            .await,
        Code::AlreadyExists,
    );
    expect_code(
        c.controller
            .create_snapshot(snapshot_req("s", "default.missing"))
            .await,
        Code::NotFound,
    );
    expect_code(
        c.controller
            .create_snapshot(snapshot_req("", &src.volume_id))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller.create_snapshot(snapshot_req("s", "")).await,
        Code::InvalidArgument,
    );

    // The copy is sparse: far less allocated than the volume's size.
    let snap_file = files_with_ext(&server.data_dir().join("pools/default/snapshots"), "img");
    assert_eq!(snap_file.len(), 1);
    let allocated = std::fs::metadata(&snap_file[0]).unwrap().blocks() * 512;
    assert!(
        allocated < 32 << 20,
        "snapshot allocated {allocated} bytes of 64 MiB"
    );

    // Restore into a bigger volume: old data only, and the filesystem grown.
    let restored = c
        .controller
        .create_volume(from_snapshot(
            "restored",
            128 * MIB,
            cap.clone(),
            &snap.snapshot_id,
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.capacity_bytes, 128 * MIB);
    assert!(restored.content_source.is_some());
    let rmnt = mount_volume(&mut c, &server, &restored.volume_id, &cap, "restored").await;
    assert_eq!(
        std::fs::read_to_string(rmnt.join("before")).unwrap(),
        "before the snapshot"
    );
    assert!(
        !rmnt.join("after").exists(),
        "data written after the snapshot leaked into it"
    );
    assert!(
        statvfs_total(&rmnt) > 100 << 20,
        "filesystem not grown: {}",
        statvfs_total(&rmnt)
    );
    write_synced(&rmnt.join("restored-only"), "x");

    // A restore smaller than the snapshot is out of range.
    let mut tiny = from_snapshot("tiny", 8 * MIB, cap.clone(), &snap.snapshot_id);
    tiny.capacity_range.as_mut().unwrap().limit_bytes = 8 * MIB;
    expect_code(c.controller.create_volume(tiny).await, Code::OutOfRange);

    // A clone of the (mounted) clone.
    let clone2 = c
        .controller
        .create_volume(from_volume("clone2", 0, cap.clone(), &restored.volume_id))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(clone2.capacity_bytes, 128 * MIB);
    let cmnt = mount_volume(&mut c, &server, &clone2.volume_id, &cap, "clone2").await;
    assert_eq!(
        std::fs::read_to_string(cmnt.join("before")).unwrap(),
        "before the snapshot"
    );
    assert!(cmnt.join("restored-only").exists());

    // Delete the source: its snapshot stays restorable.
    unmount_volume(&mut c, &server, &src.volume_id, "src").await;
    delete_volume(&mut c, &src.volume_id).await;
    let late = c
        .controller
        .create_volume(from_snapshot("late", 0, cap.clone(), &snap.snapshot_id))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let lmnt = mount_volume(&mut c, &server, &late.volume_id, &cap, "late").await;
    assert_eq!(
        std::fs::read_to_string(lmnt.join("before")).unwrap(),
        "before the snapshot"
    );

    // Listing and lookup.
    let list = |snap: &str, src: &str| csi::ListSnapshotsRequest {
        snapshot_id: snap.into(),
        source_volume_id: src.into(),
        ..Default::default()
    };
    let all = c
        .controller
        .list_snapshots(list("", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 1);
    assert_eq!(
        c.controller
            .list_snapshots(list(&snap.snapshot_id, ""))
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        1
    );
    assert_eq!(
        c.controller
            .list_snapshots(list("none-exist-id", ""))
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        0
    );
    assert_eq!(
        c.controller
            .list_snapshots(list("", &other.volume_id))
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        0
    );
    let got = c
        .controller
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        got.into_inner().snapshot.unwrap().snapshot_id,
        snap.snapshot_id
    );
    expect_code(
        c.controller
            .get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: "fake-snap-id".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );

    for (id, tag) in [
        (&restored.volume_id, "restored"),
        (&clone2.volume_id, "clone2"),
        (&late.volume_id, "late"),
    ] {
        unmount_volume(&mut c, &server, id, tag).await;
        delete_volume(&mut c, id).await;
    }
    delete_volume(&mut c, &other.volume_id).await;
    for _ in 0..2 {
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: "reallyfakesnapshotid".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    expect_code(
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: "".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn reflink_pool_clones_in_constant_space_and_xfs_clones_mount_beside_their_source() {
    let pool = ScratchFs::new(2048, &["mkfs.xfs", "-q", "-m", "reflink=1"]);
    let config = format!(
        "[pools.default]\nkind = \"local\"\npath = \"{}\"\n",
        pool.mount.join("pool").display()
    );
    let server = Server::start_with_config(&[], &config).await;
    assert!(
        server.logs().contains("reflink"),
        "the pool did not detect reflink support:\n{}",
        server.logs()
    );
    let mut c = server.clients().await;
    let cap = mount_cap("xfs", Mode::SingleNodeWriter);
    let src = c
        .controller
        .create_volume(create_req("xsrc", 512 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        src.volume_context.get("copyMethod").map(String::as_str),
        Some("reflink")
    );
    let mnt = mount_volume(&mut c, &server, &src.volume_id, &cap, "xsrc").await;
    // 256 MiB of real data, so a full copy would be obvious.
    let chunk = vec![0x5au8; 1 << 20];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("big")).unwrap();
        for _ in 0..256 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let free_before = pool.free();
    let snap = c
        .controller
        .create_snapshot(snapshot_req("xsnap", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let clone = c
        .controller
        .create_volume(from_volume("xclone", 0, cap.clone(), &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let used = free_before.saturating_sub(pool.free());
    assert!(used < 4 << 20, "reflink snapshot + clone used {used} bytes");
    // The clone has the source's xfs UUID; nouuid lets both mount at once.
    let cmnt = mount_volume(&mut c, &server, &clone.volume_id, &cap, "xclone").await;
    assert!(is_mount_point(&mnt) && is_mount_point(&cmnt));
    assert_eq!(
        std::fs::metadata(cmnt.join("big")).unwrap().len(),
        256 << 20
    );
    unmount_volume(&mut c, &server, &clone.volume_id, "xclone").await;
    unmount_volume(&mut c, &server, &src.volume_id, "xsrc").await;
    for id in [&clone.volume_id, &src.volume_id] {
        delete_volume(&mut c, id).await;
    }
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    server.assert_no_leaks();
    assert!(
        loops_under(&pool.mount).is_empty(),
        "loop devices leaked in the pool"
    );
    assert!(
        files_with_ext(&pool.mount, "img").is_empty(),
        "images leaked in the pool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_is_thawed_when_the_copy_fails() {
    let server = Server::start_with(&[("HAINA_FAILPOINTS", "copy-image=error")]).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let v = c
        .controller
        .create_volume(create_req("frozen", 32 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "f").await;
    let m = expect_code(
        c.controller
            .create_snapshot(snapshot_req("fails", &v.volume_id))
            .await,
        Code::Internal,
    );
    assert!(m.contains("copy-image"), "{m}");
    // A frozen filesystem would block this write forever.
    let path = mnt.join("after-failure");
    let write = tokio::task::spawn_blocking(move || write_synced(&path, "thawed"));
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the filesystem was left frozen")
        .unwrap();
    // The failed snapshot left nothing behind.
    assert!(files_with_ext(&server.data_dir().join("pools/default/snapshots"), "img").is_empty());
    assert!(files_with_ext(&server.data_dir().join("pools/default/snapshots"), "tmp").is_empty());
    unmount_volume(&mut c, &server, &v.volume_id, "f").await;
    delete_volume(&mut c, &v.volume_id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn online_expansion_while_mounted() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("xfs", Mode::SingleNodeWriter);
    let v = c
        .controller
        .create_volume(create_req("grow", 300 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "g").await;
    write_synced(&mnt.join("keep"), "intact");
    let before = statvfs_total(&mnt);
    let r = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 600 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 600 * MIB);
    assert!(r.node_expansion_required);
    let expand = csi::NodeExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        volume_path: mnt.to_str().unwrap().into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 600 * MIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let n = c
        .node
        .node_expand_volume(expand.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.capacity_bytes, 600 * MIB);
    c.node.node_expand_volume(expand).await.unwrap();
    let after = statvfs_total(&mnt);
    assert!(after > before + (250 << 20), "statvfs: {before} -> {after}");
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: mnt.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total as u64, after);
    assert_eq!(std::fs::read_to_string(mnt.join("keep")).unwrap(), "intact");
    expect_code(
        c.node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: "fake-vol-id".into(),
                volume_path: "some/path".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    unmount_volume(&mut c, &server, &v.volume_id, "g").await;
    delete_volume(&mut c, &v.volume_id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn ext4_grows_at_stage_and_block_volumes_need_no_node_step() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let v = c
        .controller
        .create_volume(create_req("e4", 32 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "e").await;
    write_synced(&mnt.join("keep"), "intact");
    unmount_volume(&mut c, &server, &v.volume_id, "e").await;
    let expand =
        |id: &str, cap: &csi::VolumeCapability, size: i64| csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: size,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        };
    c.controller
        .controller_expand_volume(expand(&v.volume_id, &cap, 96 * MIB))
        .await
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "e").await;
    assert!(
        statvfs_total(&mnt) > 64 << 20,
        "ext4 not grown at stage: {}",
        statvfs_total(&mnt)
    );
    assert_eq!(std::fs::read_to_string(mnt.join("keep")).unwrap(), "intact");
    // NodeExpandVolume after such a stage (csi-sanity's order) has nothing
    // left to do, and succeeds without an online resize.
    let n = c
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            volume_path: mnt.to_str().unwrap().into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 96 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.capacity_bytes, 96 * MIB);
    unmount_volume(&mut c, &server, &v.volume_id, "e").await;
    delete_volume(&mut c, &v.volume_id).await;

    // Block: the attached device shows the new size at once.
    let bcap = block_cap(Mode::SingleNodeWriter);
    let b = c
        .controller
        .create_volume(create_req("blk", 16 * MIB, bcap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let dev = mount_volume(&mut c, &server, &b.volume_id, &bcap, "b").await;
    let r = c
        .controller
        .controller_expand_volume(expand(&b.volume_id, &bcap, 48 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.node_expansion_required);
    let f = std::fs::File::open(&dev).unwrap();
    let size = rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).unwrap();
    assert_eq!(size, 48 << 20);
    drop(f);
    unmount_volume(&mut c, &server, &b.volume_id, "b").await;
    delete_volume(&mut c, &b.volume_id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_of_a_mounted_volume_includes_unsynced_writes() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let v = c
        .controller
        .create_volume(create_req("dirty", 32 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "d").await;
    // Written, not fsync'ed: only in the page cache. The freeze around the
    // copy flushes it, so the snapshot is filesystem-consistent.
    std::fs::write(mnt.join("unsynced"), "in the page cache only").unwrap();
    let snap = c
        .controller
        .create_snapshot(snapshot_req("dirty-snap", &v.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let r = c
        .controller
        .create_volume(from_snapshot(
            "dirty-restore",
            0,
            cap.clone(),
            &snap.snapshot_id,
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let rmnt = mount_volume(&mut c, &server, &r.volume_id, &cap, "r").await;
    assert_eq!(
        std::fs::read_to_string(rmnt.join("unsynced")).unwrap(),
        "in the page cache only"
    );
    for (id, tag) in [(&r.volume_id, "r"), (&v.volume_id, "d")] {
        unmount_volume(&mut c, &server, id, tag).await;
        delete_volume(&mut c, id).await;
    }
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    server.assert_no_leaks();
}
