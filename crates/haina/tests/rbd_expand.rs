//! Online expansion on a Ceph RBD pool: ControllerExpandVolume resizes the
//! image, NodeExpandVolume makes the loop device over the FUSE file see it
//! and grows the mounted xfs, with the volume in use. (Online ext4 growth
//! needs CAP_SYS_RESOURCE, which this sandbox lacks; ext4 grows offline at
//! stage time, covered by the restore test.) A block volume needs no node
//! step beyond the device refresh.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use common::*;
use haina_csi::v1 as csi;
use rbd::*;

async fn expand(ceph: &Ceph, c: &mut Clients, id: &str, bytes: i64) -> (i64, bool) {
    let r = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.capacity_bytes, r.node_expansion_required)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_online_expand_xfs() {
    let Some(ceph) = Ceph::from_env("rbd_online_expand_xfs") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let cap = mount_cap("xfs", Mode::SingleNodeWriter);
    let name = plugin.unique("pvc-grow");
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 320 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "x")
        .await
        .unwrap();
    std::fs::write(m.target.join("keep"), "still here").unwrap();
    let before = rustix::fs::statvfs(&m.target).unwrap();

    let (size, node_step) = expand(&ceph, &mut c, &id, 512 * MIB).await;
    assert_eq!(size, 512 * MIB);
    assert!(node_step);
    let r = c
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: m.target.to_str().unwrap().into(),
            staging_target_path: m.staging.to_str().unwrap().into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 512 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 512 * MIB);
    let after = rustix::fs::statvfs(&m.target).unwrap();
    assert!(
        after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize + 150 * MIB as u64,
        "xfs did not grow online: {} -> {}",
        before.f_blocks * before.f_frsize,
        after.f_blocks * after.f_frsize
    );
    assert_eq!(
        std::fs::read_to_string(m.target.join("keep")).unwrap(),
        "still here"
    );
    // Expanding to a size it already has is a no-op.
    assert_eq!(expand(&ceph, &mut c, &id, 400 * MIB).await.0, 512 * MIB);

    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_online_expand_block() {
    let Some(ceph) = Ceph::from_env("rbd_online_expand_block") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = c
        .controller
        .create_volume(create(
            &ceph,
            "ceph",
            &plugin.unique("pvc-growb"),
            16 * MIB,
            cap.clone(),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "b")
        .await
        .unwrap();
    expand(&ceph, &mut c, &id, 48 * MIB).await;
    let r = c
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: m.target.to_str().unwrap().into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 48 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 48 * MIB);
    let f = std::fs::File::open(&m.target).unwrap();
    use std::io::Seek;
    let len = (&f).seek(std::io::SeekFrom::End(0)).unwrap();
    assert_eq!(len, 48 * MIB as u64);
    drop(f);
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
}
