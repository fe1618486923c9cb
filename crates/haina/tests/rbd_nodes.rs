//! Two nodes, one cluster: a volume moves from node A to node B with its
//! data; while it is published or still mapped on A, B is refused
//! (FAILED_PRECONDITION) and the error names what holds it; a stale mapping
//! (A attached without a publication) is reported with its address.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use common::*;
use haina_csi::v1 as csi;
use rbd::*;

fn publish_req(ceph: &Ceph, id: &str, node: &str) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(ext4()),
        secrets: ceph.secrets(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_volume_moves_between_nodes_with_fencing() {
    let Some(ceph) = Ceph::from_env("rbd_volume_moves_between_nodes_with_fencing") else {
        return;
    };
    // A runs the controller and a node plugin; B is a node plugin only.
    let a = Plugin::start(&ceph, "controller,node").await;
    let b = Plugin::start(&ceph, "node").await;
    assert_ne!(a.node_id, b.node_id);
    let mut c = a.clients().await;
    let name = a.unique("pvc-move");
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 64 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    let on_a = publish_and_mount(&ceph, &mut c, &a, &id, &ext4(), "a")
        .await
        .unwrap();
    std::fs::write(on_a.target.join("owner"), "written on A").unwrap();
    std::fs::File::open(on_a.target.join("owner"))
        .unwrap()
        .sync_all()
        .unwrap();

    // Published on A: B is refused, naming A.
    let msg = expect_code(
        c.controller
            .controller_publish_volume(publish_req(&ceph, &id, &b.node_id))
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert!(msg.contains(&a.node_id), "{msg}");

    // A force-detach (ControllerUnpublish while A still has it mapped):
    // B is still refused, because A's mapping is live and unpublished.
    unpublish(&ceph, &mut c, &id, &a.node_id).await;
    let msg = expect_code(
        c.controller
            .controller_publish_volume(publish_req(&ceph, &id, &b.node_id))
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert!(
        msg.contains("stale mapping") && msg.contains(&a.node_id) && msg.contains("blocklist"),
        "{msg}"
    );
    // And a node that skips the controller cannot steal the exclusive lock.
    let err = mount_on(&ceph, &b, &id, &ext4(), "b-steal", Default::default())
        .await
        .err()
        .expect("B must not get the image while A holds its lock");
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(err.message().contains("held by"), "{}", err.message());
    b.assert_no_leaks_except_dirs();

    // A lets go properly: now B gets it, with A's data.
    unmount_on(&a, &on_a).await;
    let on_b = publish_and_mount(&ceph, &mut c, &b, &id, &ext4(), "b")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(on_b.target.join("owner")).unwrap(),
        "written on A"
    );
    // ... and A is refused in turn.
    let msg = expect_code(
        c.controller
            .controller_publish_volume(publish_req(&ceph, &id, &a.node_id))
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert!(msg.contains(&b.node_id), "{msg}");

    unmount_on(&b, &on_b).await;
    unpublish(&ceph, &mut c, &id, &b.node_id).await;
    delete(&ceph, &mut c, &id).await;
    assert!(ceph.images_with(&name).is_empty());
    a.assert_no_leaks();
    b.assert_no_leaks();
}

trait NoLeaks {
    fn assert_no_leaks_except_dirs(&self);
}

impl NoLeaks for Plugin {
    /// After a refused stage nothing may be left running or mounted.
    fn assert_no_leaks_except_dirs(&self) {
        let root = self.dir.path().to_str().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(root)),
            "a refused stage left a mount"
        );
        assert!(
            self.fuse_servers().is_empty(),
            "a refused stage left a FUSE server"
        );
    }
}
