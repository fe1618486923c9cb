//! The CSI lifecycle on a Ceph RBD pool (fuse mounter), against the real
//! cluster: data written through the mounted volume survives a full
//! teardown and a second stage; idempotency and the CSI error codes; the
//! krbd/nbd mounters fail cleanly on a kernel without their modules.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::io::{Read, Write};

use common::*;
use haina_csi::v1 as csi;
use rbd::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_lifecycle_ext4_with_data() {
    let Some(ceph) = Ceph::from_env("rbd_lifecycle_ext4_with_data") else {
        return;
    };
    let plugin = Plugin::start_with_keyring(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let name = plugin.unique("pvc-life");
    let cap = ext4();

    let vol = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 64 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert!(
        vol.accessible_topology.is_empty(),
        "RBD volumes are reachable everywhere"
    );
    let id = vol.volume_id.clone();
    assert_eq!(ceph.images_with(&name), vec![format!("csi-vol-{name}")]);
    // Idempotent by name.
    let again = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 64 * MIB, cap.clone()))
        .await
        .unwrap();
    assert_eq!(again.into_inner().volume.unwrap().volume_id, id);
    // Visible through Get/List (metadata in Ceph, not local files).
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
            .any(|e| e.volume.as_ref().unwrap().volume_id == id)
    );

    // Capacity is the RADOS pool's (once a connection exists).
    let capacity = c
        .controller
        .get_capacity(csi::GetCapacityRequest {
            volume_capabilities: vec![cap.clone()],
            parameters: params(&[("pool", "ceph")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(capacity.available_capacity > 0, "{capacity:?}");

    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "p1")
        .await
        .unwrap();
    let payload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    {
        let mut f = std::fs::File::create(m.target.join("data.bin")).unwrap();
        f.write_all(&payload).unwrap();
        f.sync_all().unwrap();
    }
    // The device is a loop device over our FUSE file, served by a detached server.
    let loops = loops_under(plugin.dir.path());
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert!(loops[0].1.ends_with("/image"), "{loops:?}");
    let sys = format!(
        "/sys/block/{}/loop/dio",
        loops[0].0.trim_start_matches("/dev/")
    );
    assert_eq!(
        std::fs::read_to_string(sys).unwrap().trim(),
        "1",
        "loop device without direct I/O"
    );
    assert_eq!(plugin.fuse_servers().len(), 1);
    // Stats work through the generic node code.
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: m.target.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.volume_condition.is_some_and(|c| !c.abnormal));

    unmount_on(&plugin, &m).await;
    assert!(
        plugin.fuse_servers().is_empty(),
        "the FUSE server exits on detach"
    );
    // Stage again: the data is there.
    let m = mount_on(&ceph, &plugin, &id, &cap, "p2", Default::default())
        .await
        .unwrap();
    let mut back = Vec::new();
    std::fs::File::open(m.target.join("data.bin"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == payload, "data read back differs");
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    delete(&ceph, &mut c, &id).await; // idempotent
    assert!(ceph.images_with(&name).is_empty());
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_block_volume() {
    let Some(ceph) = Ceph::from_env("rbd_block_volume") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let name = plugin.unique("pvc-blk");
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 16 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "b1")
        .await
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&m.target)
            .unwrap();
        f.write_all_at(b"hello rbd", 4096 * 7).unwrap();
        f.sync_all().unwrap();
        let mut buf = [0u8; 9];
        f.read_exact_at(&mut buf, 4096 * 7).unwrap();
        assert_eq!(&buf, b"hello rbd");
    }
    unmount_on(&plugin, &m).await;
    // The bytes are in the image, as librbd sees it.
    let img = ceph
        .connect()
        .open_read_only(&format!("csi-vol-{name}"))
        .unwrap();
    let mut buf = [0u8; 9];
    img.read_at(4096 * 7, &mut buf).unwrap();
    assert_eq!(&buf, b"hello rbd");
    drop(img);
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_errors_and_idempotency() {
    let Some(ceph) = Ceph::from_env("rbd_errors_and_idempotency") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let name = plugin.unique("pvc-err");
    let cap = ext4();
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 32 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    // Same name, incompatible size: ALREADY_EXISTS.
    let m = expect_code(
        c.controller
            .create_volume(create(&ceph, "ceph", &name, 64 * MIB, cap.clone()))
            .await,
        tonic::Code::AlreadyExists,
    );
    assert!(m.contains(&name), "{m}");
    // Missing things: NOT_FOUND.
    let missing = "ceph.no-such-volume";
    expect_code(
        c.controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: missing.into(),
                node_id: plugin.node_id.clone(),
                volume_capability: Some(cap.clone()),
                secrets: ceph.secrets(),
                ..Default::default()
            })
            .await,
        tonic::Code::NotFound,
    );
    expect_code(
        c.controller
            .create_snapshot(csi::CreateSnapshotRequest {
                name: plugin.unique("snap-err"),
                source_volume_id: missing.into(),
                secrets: ceph.secrets(),
                ..Default::default()
            })
            .await,
        tonic::Code::NotFound,
    );
    let mut from_missing = create(
        &ceph,
        "ceph",
        &plugin.unique("pvc-err2"),
        32 * MIB,
        cap.clone(),
    );
    from_missing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "ceph.no-such-snapshot".into(),
            },
        )),
    });
    expect_code(
        c.controller.create_volume(from_missing).await,
        tonic::Code::NotFound,
    );
    expect_code(
        c.controller
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: missing.into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 64 * MIB,
                    limit_bytes: 0,
                }),
                secrets: ceph.secrets(),
                ..Default::default()
            })
            .await,
        tonic::Code::NotFound,
    );
    // Deleting what does not exist is fine.
    delete(&ceph, &mut c, missing).await;
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: "ceph.no-such-snapshot".into(),
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
    // Wrong secrets: INVALID_ARGUMENT, and the key never shows in the logs.
    let mut half = create(
        &ceph,
        "ceph",
        &plugin.unique("pvc-err3"),
        32 * MIB,
        cap.clone(),
    );
    half.secrets.remove("userKey");
    expect_code(
        c.controller.create_volume(half).await,
        tonic::Code::InvalidArgument,
    );
    // Multi-node writers on a filesystem would corrupt it: refused.
    expect_code(
        c.controller
            .create_volume(create(
                &ceph,
                "ceph",
                &plugin.unique("pvc-rwx"),
                32 * MIB,
                mount_cap("ext4", Mode::MultiNodeMultiWriter),
            ))
            .await,
        tonic::Code::InvalidArgument,
    );

    // Published: delete is refused, naming the node.
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "e1")
        .await
        .unwrap();
    let msg = expect_code(
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                secrets: ceph.secrets(),
            })
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert!(msg.contains(&plugin.node_id), "{msg}");
    // Unpublished behind the node's back (a force-detach): the image still
    // has a watcher, and delete names it.
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    let msg = expect_code(
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                secrets: ceph.secrets(),
            })
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert!(
        msg.contains("client.") && msg.contains(&plugin.node_id),
        "{msg}"
    );
    unmount_on(&plugin, &m).await;
    delete(&ceph, &mut c, &id).await;

    // krbd and nbd cannot run on this kernel: FAILED_PRECONDITION naming the module.
    for (pool, module) in [("ceph-krbd", "\"rbd\""), ("ceph-nbd", "\"nbd\"")] {
        if std::path::Path::new(if module == "\"rbd\"" {
            "/sys/bus/rbd"
        } else {
            "/sys/block/nbd0"
        })
        .exists()
        {
            println!("{pool}: module {module} is present here; not checking its absence");
            continue;
        }
        let vname = plugin.unique(&format!("pvc-{pool}"));
        let vid = c
            .controller
            .create_volume(create(&ceph, pool, &vname, 16 * MIB, cap.clone()))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let err = publish_and_mount(&ceph, &mut c, &plugin, &vid, &cap, pool)
            .await
            .err()
            .expect("stage must fail");
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{}",
            err.message()
        );
        assert!(
            err.message().contains(&format!("kernel module {module}")),
            "{}",
            err.message()
        );
        unpublish(&ceph, &mut c, &vid, &plugin.node_id).await;
        delete(&ceph, &mut c, &vid).await;
    }
    assert!(ceph.images_with(&plugin.unique("")).is_empty());
    assert!(
        !plugin.logs().contains(&ceph.key),
        "the key leaked into the log"
    );
    plugin.assert_no_leaks();
}
