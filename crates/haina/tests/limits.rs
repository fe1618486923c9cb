//! Attach limits (issue 10, item 3): `--max-volumes-per-node` is reported
//! by NodeGetInfo, so the scheduler's attach-limit logic sees it, and is
//! enforced by NodeStageVolume on real devices.

mod common;

use common::*;
use haina_csi::v1 as csi;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn max_volumes_per_node_is_reported_and_enforced() {
    let server = Server::start_with(&[("HAINA_MAX_VOLUMES_PER_NODE", "2")]).await;
    let mut c = server.clients().await;
    let info = c
        .node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 2);

    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut ids = Vec::new();
    for name in ["lim-1", "lim-2", "lim-3"] {
        let v = c
            .controller
            .create_volume(create_req(name, 16 << 20, cap.clone()))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }
    mount_volume(&mut c, &server, &ids[0], &cap, "v0").await;
    mount_volume(&mut c, &server, &ids[1], &cap, "v1").await;
    let staging = server.path("v2/staging");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: ids[2].clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let m = expect_code(
        c.node.node_stage_volume(stage.clone()).await,
        Code::ResourceExhausted,
    );
    assert!(m.contains("max_volumes_per_node"), "{m}");
    assert_eq!(
        loops_under(server.dir.path()).len(),
        2,
        "the third was attached"
    );
    // Freeing a slot lets the third in.
    unmount_volume(&mut c, &server, &ids[0], "v0").await;
    c.node.node_stage_volume(stage).await.unwrap();
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: ids[2].clone(),
            staging_target_path: staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    unmount_volume(&mut c, &server, &ids[1], "v1").await;
    for id in ids {
        delete_volume(&mut c, &id).await;
    }
    server.assert_no_leaks();
}
