//! Snapshots, restores and clones on a Ceph RBD pool, with data checks:
//! a restore shows the data of its point in time, a clone the source's
//! current data; no image is a full copy (every new image is a clone); a
//! snapshot outlives its source volume and a volume with snapshots can be
//! deleted; everything is gone once the last dependant is.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use haina_csi::v1 as csi;
use rbd::*;

fn from_source(
    ceph: &Ceph,
    name: &str,
    bytes: i64,
    source: csi::volume_content_source::Type,
) -> csi::CreateVolumeRequest {
    let mut r = create(ceph, "ceph", name, bytes, ext4());
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    r
}

fn snap_source(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
        snapshot_id: id.into(),
    })
}

fn write(m: &Mounted, file: &str, text: &str) {
    std::fs::write(m.target.join(file), text).unwrap();
    std::fs::File::open(m.target.join(file))
        .unwrap()
        .sync_all()
        .unwrap();
}

fn read(m: &Mounted, file: &str) -> Option<String> {
    std::fs::read_to_string(m.target.join(file)).ok()
}

/// The parent (`image@snap`) of an image, as librbd reports it.
fn parent_of(ceph: &Ceph, image: &str) -> Option<String> {
    let img = ceph.connect().open_read_only(image).unwrap();
    img.parent_info()
        .unwrap()
        .map(|p| format!("{}@{}", p.image_name, p.snap_name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_snapshot_restore_clone() {
    let Some(ceph) = Ceph::from_env("rbd_snapshot_restore_clone") else {
        return;
    };
    let plugin = Plugin::start_with_keyring(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let (src_name, snap_name) = (plugin.unique("pvc-src"), plugin.unique("snap-a"));
    let src = c
        .controller
        .create_volume(create(&ceph, "ceph", &src_name, 64 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &src, &ext4(), "src")
        .await
        .unwrap();
    write(&m, "state", "before snapshot");

    // Snapshot while the source is mounted (its server holds the lock).
    let snap_req = csi::CreateSnapshotRequest {
        name: snap_name.clone(),
        source_volume_id: src.clone(),
        secrets: ceph.secrets(),
        ..Default::default()
    };
    let snap = c
        .controller
        .create_snapshot(snap_req.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 64 * MIB);
    assert_eq!(snap.source_volume_id, src);
    // Idempotent; the same name for another source is ALREADY_EXISTS.
    let again = c
        .controller
        .create_snapshot(snap_req.clone())
        .await
        .unwrap();
    assert_eq!(
        again.into_inner().snapshot.unwrap().snapshot_id,
        snap.snapshot_id
    );
    let listed = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: src.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    // The snapshot is a clone of the source, not a copy; no snapshot is
    // left on the source under a user-visible name.
    let snap_image = format!("csi-snap-{snap_name}");
    assert!(
        parent_of(&ceph, &snap_image)
            .unwrap()
            .starts_with(&format!("csi-vol-{src_name}@"))
    );

    write(&m, "state", "after snapshot");

    // Restore (bigger than the snapshot: grown at stage) and clone.
    let restored_name = plugin.unique("pvc-restored");
    let restored = c
        .controller
        .create_volume(from_source(
            &ceph,
            &restored_name,
            96 * MIB,
            snap_source(&snap.snapshot_id),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.capacity_bytes, 96 * MIB);
    assert_eq!(
        parent_of(&ceph, &format!("csi-vol-{restored_name}")).unwrap(),
        format!("{snap_image}@haina-restore")
    );
    // Unmount the source before cloning it so the clone sees a clean fs.
    unmount_on(&plugin, &m).await;
    let clone_name = plugin.unique("pvc-clone");
    let clone = c
        .controller
        .create_volume(from_source(
            &ceph,
            &clone_name,
            64 * MIB,
            csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
                volume_id: src.clone(),
            }),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(
        parent_of(&ceph, &format!("csi-vol-{clone_name}"))
            .unwrap()
            .starts_with(&format!("csi-vol-{src_name}@"))
    );

    let r = publish_and_mount(
        &ceph,
        &mut c,
        &plugin,
        &restored.volume_id,
        &ext4(),
        "restored",
    )
    .await
    .unwrap();
    assert_eq!(read(&r, "state").as_deref(), Some("before snapshot"));
    let st = rustix::fs::statvfs(&r.target).unwrap();
    assert!(
        st.f_blocks * st.f_frsize > 80 * MIB as u64,
        "restored fs was not grown"
    );
    write(&r, "state", "restored and changed");
    let k = publish_and_mount(&ceph, &mut c, &plugin, &clone.volume_id, &ext4(), "clone")
        .await
        .unwrap();
    assert_eq!(read(&k, "state").as_deref(), Some("after snapshot"));
    unmount_on(&plugin, &r).await;
    unmount_on(&plugin, &k).await;
    for id in [&src, &restored.volume_id, &clone.volume_id] {
        unpublish(&ceph, &mut c, id, &plugin.node_id).await;
    }

    // The source goes while its snapshot and clone live on.
    delete(&ceph, &mut c, &src).await;
    let gone = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        !gone
            .entries
            .iter()
            .any(|e| e.volume.as_ref().unwrap().volume_id == src)
    );
    // A new volume may take the deleted one's name (a new generation).
    let reborn = c
        .controller
        .create_volume(create(&ceph, "ceph", &src_name, 32 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(reborn.volume_id, src);
    assert!(ceph.images_with(&format!("csi-vol-{src_name}.1")).len() == 1);
    delete(&ceph, &mut c, &src).await;

    // The snapshot still restores after its source is gone.
    let second = c
        .controller
        .create_volume(from_source(
            &ceph,
            &plugin.unique("pvc-restored2"),
            64 * MIB,
            snap_source(&snap.snapshot_id),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let r2 = publish_and_mount(
        &ceph,
        &mut c,
        &plugin,
        &second.volume_id,
        &ext4(),
        "restored2",
    )
    .await
    .unwrap();
    assert_eq!(read(&r2, "state").as_deref(), Some("before snapshot"));
    unmount_on(&plugin, &r2).await;
    unpublish(&ceph, &mut c, &second.volume_id, &plugin.node_id).await;

    // Delete the snapshot while restores of it exist, then the rest.
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
    let snaps = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        !snaps
            .entries
            .iter()
            .any(|e| e.snapshot.as_ref().unwrap().snapshot_id == snap.snapshot_id)
    );
    for id in [&restored.volume_id, &clone.volume_id, &second.volume_id] {
        delete(&ceph, &mut c, id).await;
    }
    // Garbage collection removed the hidden source and snapshot images.
    let left = ceph.images_with(&plugin.unique(""));
    assert!(left.is_empty(), "images left: {left:?}");
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_clone_depth_limit_flattens() {
    let Some(ceph) = Ceph::from_env("rbd_clone_depth_limit_flattens") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller").await;
    let mut c = plugin.clients().await;
    let mut id = c
        .controller
        .create_volume(create(
            &ceph,
            "ceph",
            &plugin.unique("pvc-d0"),
            16 * MIB,
            ext4(),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let mut ids = vec![id.clone()];
    // Clone of a clone of ...: past the default limit (8) a clone is flattened.
    for depth in 1..=10 {
        let name = plugin.unique(&format!("pvc-d{depth}"));
        id = c
            .controller
            .create_volume(from_source(
                &ceph,
                &name,
                16 * MIB,
                csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource {
                        volume_id: id.clone(),
                    },
                ),
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        ids.push(id.clone());
        let parent = parent_of(&ceph, &format!("csi-vol-{name}"));
        if depth == 9 {
            assert!(
                parent.is_none(),
                "depth 9 must be flattened, has parent {parent:?}"
            );
        } else if depth <= 8 {
            assert!(parent.is_some(), "depth {depth} must stay a clone");
        }
    }
    for id in ids.iter().rev() {
        delete(&ceph, &mut c, id).await;
    }
    let left = ceph.images_with(&plugin.unique(""));
    assert!(left.is_empty(), "images left: {left:?}");
}
