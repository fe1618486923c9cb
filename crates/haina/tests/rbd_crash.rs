//! Crash safety of the RBD controller: the process is killed (`abort`, no
//! cleanup) between the steps of a create, a snapshot and a delete; after a
//! restart the retried call converges on the same result, anchored in Ceph
//! (image metadata), with nothing orphaned.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use haina_csi::v1 as csi;
use rbd::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_retries_after_kill_converge() {
    let Some(ceph) = Ceph::from_env("rbd_retries_after_kill_converge") else {
        return;
    };
    let mut p = Plugin::start_full(
        &ceph,
        "controller",
        &[(
            "HAINA_FAILPOINTS",
            "rbd-after-create=abort,rbd-snapshot-after-clone=abort,rbd-delete-between=abort",
        )],
        PluginConfig::Keyring,
    )
    .await;
    let name = p.unique("pvc-crash");
    let req = create(&ceph, "ceph", &name, 32 * MIB, ext4());

    // Killed after the image exists, before its metadata: not a volume yet.
    let mut c = p.clients().await;
    assert!(c.controller.create_volume(req.clone()).await.is_err());
    p.wait_exit();
    assert_eq!(ceph.images_with(&name).len(), 1, "the image was made");
    p.env.clear();
    p.spawn().await;
    let mut c = p.clients().await;
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .entries
            .iter()
            .all(|e| !e.volume.as_ref().unwrap().volume_id.contains(&name))
    );
    // The retry completes it.
    let vol = c
        .controller
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 32 * MIB);
    assert_eq!(ceph.images_with(&name), vec![format!("csi-vol-{name}")]);

    // Killed after the snapshot's clone was made, before it was complete.
    p.stop();
    p.env = vec![(
        "HAINA_FAILPOINTS".into(),
        "rbd-snapshot-after-clone=abort".into(),
    )];
    p.spawn().await;
    let mut c = p.clients().await;
    let snap_req = csi::CreateSnapshotRequest {
        name: p.unique("snap-crash"),
        source_volume_id: vol.volume_id.clone(),
        secrets: ceph.secrets(),
        ..Default::default()
    };
    assert!(
        c.controller
            .create_snapshot(snap_req.clone())
            .await
            .is_err()
    );
    p.wait_exit();
    p.env.clear();
    p.spawn().await;
    let mut c = p.clients().await;
    let snap = c
        .controller
        .create_snapshot(snap_req)
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    // The temporary RBD snapshot on the source is gone (or in the trash).
    let src = ceph
        .connect()
        .open_read_only(&format!("csi-vol-{name}"))
        .unwrap();
    let snaps = src.snap_list().unwrap();
    assert!(
        !snaps.iter().any(|s| s.name.starts_with("csi-")),
        "{snaps:?}"
    );
    drop(src);

    // Killed in the middle of a delete: the retry finishes it.
    p.stop();
    p.env = vec![("HAINA_FAILPOINTS".into(), "rbd-delete-between=abort".into())];
    p.spawn().await;
    let mut c = p.clients().await;
    assert!(
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: vol.volume_id.clone(),
                secrets: ceph.secrets(),
            })
            .await
            .is_err()
    );
    p.wait_exit();
    p.env.clear();
    p.spawn().await;
    let mut c = p.clients().await;
    delete(&ceph, &mut c, &vol.volume_id).await;
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
    let left = ceph.images_with(&p.unique(""));
    assert!(left.is_empty(), "images left: {left:?}");
}
