//! The full CSI lifecycle on the embedded local pool, with real loop
//! devices, filesystems and mounts: data written through the published
//! path survives a complete teardown and a second stage.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;

use common::*;
use haina_csi::v1 as csi;

const MIB: i64 = 1 << 20;

async fn lifecycle(fs: &str, size: i64) {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let block = fs == "block";
    let cap = if block {
        block_cap(Mode::SingleNodeWriter)
    } else {
        mount_cap(fs, Mode::SingleNodeWriter)
    };

    let vol = c
        .controller
        .create_volume(create_req(&format!("pvc-{fs}"), size, cap.clone()))
        .await
        .unwrap()
        .into_inner();
    let vol = vol.volume.unwrap();
    assert_eq!(vol.capacity_bytes, size);
    assert_eq!(
        vol.accessible_topology[0]
            .segments
            .get("topology.haina.dev/node"),
        Some(&server.node_id)
    );
    let id = vol.volume_id.clone();
    // CreateVolume is idempotent by name.
    let again = c
        .controller
        .create_volume(create_req(&format!("pvc-{fs}"), size, cap.clone()))
        .await
        .unwrap();
    assert_eq!(again.into_inner().volume.unwrap().volume_id, id);

    let publish = csi::ControllerPublishVolumeRequest {
        volume_id: id.clone(),
        node_id: server.node_id.clone(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    let ctx = c
        .controller
        .controller_publish_volume(publish.clone())
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    c.controller
        .controller_publish_volume(publish.clone())
        .await
        .unwrap();

    let staging = server.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: id.clone(),
        publish_context: ctx.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    let target = server.path("pods/p1/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let publish_node = |target: &std::path::Path| csi::NodePublishVolumeRequest {
        volume_id: id.clone(),
        publish_context: ctx.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        target_path: target.to_str().unwrap().into(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    let unpublish = |target: &std::path::Path| csi::NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.to_str().unwrap().into(),
    };
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
    };

    // Stage and publish, twice each: idempotent.
    for _ in 0..2 {
        c.node.node_stage_volume(stage.clone()).await.unwrap();
    }
    for _ in 0..2 {
        c.node
            .node_publish_volume(publish_node(&target))
            .await
            .unwrap();
    }
    assert!(is_mount_point(&target), "target is not a mount point");
    assert_eq!(
        loops_under(server.dir.path()).len(),
        1,
        "exactly one loop device"
    );

    let payload = format!("written through {fs} at {}", target.display());
    if block {
        assert!(
            std::fs::metadata(&target)
                .unwrap()
                .file_type()
                .is_block_device()
        );
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(payload.as_bytes()).unwrap();
        f.sync_all().unwrap();
    } else {
        let mut f = std::fs::File::create(target.join("data.txt")).unwrap();
        f.write_all(payload.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = &stats.usage[0];
    assert!(
        bytes.total > 0 && bytes.total <= size,
        "total {}",
        bytes.total
    );
    assert_eq!(stats.usage.len(), if block { 1 } else { 2 });
    assert!(!stats.volume_condition.unwrap().abnormal);
    if !block {
        // The mount vanishes under the CO's feet: the condition says so,
        // and a repeated publish repairs it.
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
        let stats = c
            .node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.to_str().unwrap().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let cond = stats.volume_condition.unwrap();
        assert!(
            cond.abnormal && cond.message.contains("not a mount point"),
            "{cond:?}"
        );
        c.node
            .node_publish_volume(publish_node(&target))
            .await
            .unwrap();
        assert!(
            std::fs::read_to_string(target.join("data.txt"))
                .unwrap()
                .starts_with("written through")
        );
    }

    // Tear down, twice each: idempotent; the target is removed.
    for _ in 0..2 {
        c.node
            .node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
    }
    assert!(!target.exists(), "target not removed");
    for _ in 0..2 {
        c.node.node_unstage_volume(unstage.clone()).await.unwrap();
    }
    assert!(!is_mount_point(&staging));
    assert!(
        loops_under(server.dir.path()).is_empty(),
        "loop device not detached"
    );

    // Stage again at a new pod path: the data is there (and was not reformatted).
    let target2 = server.path("pods/p2/mount");
    std::fs::create_dir_all(target2.parent().unwrap()).unwrap();
    c.node.node_stage_volume(stage.clone()).await.unwrap();
    c.node
        .node_publish_volume(publish_node(&target2))
        .await
        .unwrap();
    let read = if block {
        let mut f = std::fs::File::open(&target2).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        let mut buf = vec![0u8; payload.len()];
        f.read_exact(&mut buf).unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    } else {
        std::fs::read_to_string(target2.join("data.txt")).unwrap()
    };
    assert_eq!(read, payload);

    c.node
        .node_unpublish_volume(unpublish(&target2))
        .await
        .unwrap();
    c.node.node_unstage_volume(unstage.clone()).await.unwrap();
    let unpub = csi::ControllerUnpublishVolumeRequest {
        volume_id: id.clone(),
        node_id: server.node_id.clone(),
        ..Default::default()
    };
    c.controller
        .controller_unpublish_volume(unpub.clone())
        .await
        .unwrap();
    c.controller
        .controller_unpublish_volume(unpub)
        .await
        .unwrap();
    for _ in 0..2 {
        delete_volume(&mut c, &id).await;
    }
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn ext4_lifecycle_keeps_data() {
    lifecycle("ext4", 64 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn xfs_lifecycle_keeps_data() {
    lifecycle("xfs", 300 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn block_lifecycle_keeps_data() {
    lifecycle("block", 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readonly_controller_publish_mounts_read_only() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let vol = c
        .controller
        .create_volume(create_req("ro", 16 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // Format it once read-write, so that a read-only stage has a filesystem.
    let mnt = mount_volume(&mut c, &server, &vol.volume_id, &cap, "rw").await;
    write_synced(&mnt.join("f"), "kept");
    unmount_volume(&mut c, &server, &vol.volume_id, "rw").await;
    let ctx = c
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            node_id: server.node_id.clone(),
            volume_capability: Some(cap.clone()),
            readonly: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(ctx.get("readonly").map(String::as_str), Some("true"));
    let staging = server.path("ro-staging");
    std::fs::create_dir_all(&staging).unwrap();
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            publish_context: ctx,
            staging_target_path: staging.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(staging.join("f")).unwrap(), "kept");
    let err = std::fs::write(staging.join("g"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    c.controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            node_id: server.node_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    delete_volume(&mut c, &vol.volume_id).await;
    server.assert_no_leaks();
}
