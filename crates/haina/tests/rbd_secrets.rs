//! Credentials reach every call of a request that carries them: a freshly
//! started controller without a keyring, whose first call is a
//! ControllerUnpublish with secrets, really removes the publication.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use haina_csi::v1 as csi;
use rbd::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_after_controller_restart_uses_the_request_secrets() {
    let Some(ceph) = Ceph::from_env("unpublish_after_controller_restart_uses_the_request_secrets")
    else {
        return;
    };
    let first = Plugin::start(&ceph, "controller").await;
    let mut c = first.clients().await;
    let name = first.unique("pvc-secrets");
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 16 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    c.controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "node-gone".into(),
            volume_capability: Some(ext4()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap();
    drop(c);
    drop(first);

    // A new controller process: no connection yet, no keyring configured.
    let second = Plugin::start(&ceph, "controller").await;
    let mut c = second.clients().await;
    unpublish(&ceph, &mut c, &id, "node-gone").await;
    let got = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.status.unwrap().published_node_ids.is_empty(),
        "the publication survived the unpublish"
    );
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
}
