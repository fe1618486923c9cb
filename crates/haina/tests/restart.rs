//! Crash safety: `kill -9` (or an abort at a named point inside an
//! operation) at any step, then a restarted server and a CO that retries
//! every call. The retries converge, data survives, the restarted node
//! plugin re-adopts its loop device instead of attaching a second one, and
//! after teardown nothing leaks.

mod common;

use common::*;
use haina_csi::v1 as csi;

const MIB: i64 = 1 << 20;

/// The whole lifecycle, as a CO retrying from the top would run it.
/// `stop_after_publish` leaves the volume published (for kill -9 mid-way).
async fn lifecycle(
    server: &Server,
    fs: &str,
    stop_after_publish: bool,
) -> Result<(), tonic::Status> {
    let mut c = server.clients().await;
    let cap = mount_cap(fs, Mode::SingleNodeWriter);
    let size = if fs == "xfs" { 300 * MIB } else { 32 * MIB };
    let v = c
        .controller
        .create_volume(create_req("crashy", size, cap.clone()))
        .await?
        .into_inner()
        .volume
        .unwrap();
    let id = v.volume_id.clone();
    c.controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: server.node_id.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
    let staging = server.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let st = staging.to_str().unwrap().to_string();
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st.clone(),
            volume_capability: Some(cap.clone()),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await?;
    let target = server.path("pod/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let tg = target.to_str().unwrap().to_string();
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st.clone(),
            target_path: tg.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
    // The data written on the first pass must be intact on any later pass.
    let data = target.join("data");
    if data.exists() {
        assert_eq!(std::fs::read_to_string(&data).unwrap(), "survives crashes");
    } else {
        std::fs::write(&data, "survives crashes").unwrap();
        std::fs::File::open(&data).unwrap().sync_all().unwrap();
    }
    assert_eq!(
        loops_under(server.dir.path()).len(),
        1,
        "one image, one loop device"
    );
    if stop_after_publish {
        return Ok(());
    }
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: tg,
        })
        .await?;
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st,
        })
        .await?;
    c.controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: server.node_id.clone(),
            ..Default::default()
        })
        .await?;
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_lifecycle_then_restart_readopts_and_converges() {
    let mut server = Server::start().await;
    lifecycle(&server, "ext4", true).await.unwrap();
    let before = loops_under(server.dir.path());
    server.kill9();
    server.spawn().await;
    // The CO retries from the top: every step is already done and says so.
    lifecycle(&server, "ext4", true).await.unwrap();
    assert_eq!(
        loops_under(server.dir.path()),
        before,
        "the restarted plugin attached a second loop device"
    );
    lifecycle(&server, "ext4", false).await.unwrap();
    server.assert_no_leaks();
}

/// Each named point inside an operation; the server aborts there (no
/// cleanup at all), then a fresh server and a retrying CO must converge.
#[tokio::test(flavor = "multi_thread")]
async fn abort_at_every_point_converges() {
    let points = [
        ("create-image", "ext4"),
        ("stage-before-mkfs", "ext4"),
        ("stage-before-mkfs", "xfs"),
        ("stage-before-mount", "ext4"),
        ("unstage-before-detach", "ext4"),
        ("delete-between", "ext4"),
    ];
    for (point, fs) in points {
        let mut server =
            Server::start_with(&[("HAINA_FAILPOINTS", &format!("{point}=abort"))]).await;
        let err = lifecycle(&server, fs, false)
            .await
            .expect_err(&format!("{point}: the failpoint never fired"));
        assert!(
            matches!(
                err.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "{point}: {err}"
        );
        let status = server.wait_exit();
        assert!(!status.success(), "{point}: the server did not die");
        server.spawn_with_env(vec![]).await;
        lifecycle(&server, fs, false)
            .await
            .unwrap_or_else(|e| panic!("{point}: retry did not converge: {e}\n{}", server.logs()));
        server.assert_no_leaks();
        let leftovers = files_with_ext(&server.data_dir(), "tmp");
        assert!(
            leftovers.is_empty(),
            "{point}: temp files left: {leftovers:?}"
        );
        let records = files_with_ext(&server.data_dir(), "json");
        assert!(records.is_empty(), "{point}: records left: {records:?}");
    }
}
