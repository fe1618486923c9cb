//! The CSI error tables, RPC by RPC, against a real server: every bad
//! request gets the spec's code and a message naming the offending field,
//! and nothing is left behind.

mod common;

use common::*;
use haina_csi::v1 as csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn stage_req(
    id: &str,
    staging: &str,
    cap: Option<csi::VolumeCapability>,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        volume_capability: cap,
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    staging: &str,
    target: &str,
    cap: Option<csi::VolumeCapability>,
    ro: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: cap,
        readonly: ro,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_capabilities() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let info = c
        .identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "haina.csi.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = c
        .identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    // Controller, GroupController, accessibility constraints, online expansion.
    assert_eq!(caps.capabilities.len(), 4);
    {
        use csi::plugin_capability::{Type, service};
        assert!(caps.capabilities.iter().any(|cap| matches!(cap.r#type,
            Some(Type::Service(ref s)) if s.r#type == service::Type::GroupControllerService as i32)));
    }
    let probe = c
        .identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let info = c
        .node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, server.node_id);
    assert_eq!(
        info.accessible_topology.unwrap().segments["topology.haina.dev/node"],
        server.node_id
    );
    let ncaps = c
        .node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ncaps.capabilities.len() >= 3);
    let ccaps = c
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ccaps.capabilities.len() >= 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_errors() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let snw = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut r = create_req("", MIB, snw.clone());
    assert!(
        expect_code(
            c.controller.create_volume(r.clone()).await,
            Code::InvalidArgument
        )
        .contains("name")
    );
    r.name = "v1".into();
    r.volume_capabilities.clear();
    assert!(
        expect_code(
            c.controller.create_volume(r.clone()).await,
            Code::InvalidArgument
        )
        .contains("volume_capabilities")
    );
    let mut no_mode = snw.clone();
    no_mode.access_mode = None;
    r.volume_capabilities = vec![no_mode];
    assert!(
        expect_code(
            c.controller.create_volume(r.clone()).await,
            Code::InvalidArgument
        )
        .contains("access_mode")
    );
    r.volume_capabilities = vec![mount_cap("ext4", Mode::MultiNodeMultiWriter)];
    let m = expect_code(
        c.controller.create_volume(r.clone()).await,
        Code::InvalidArgument,
    );
    assert!(
        m.contains("MULTI_NODE_MULTI_WRITER") && m.contains("local pool"),
        "{m}"
    );
    r.volume_capabilities = vec![mount_cap("ntfs", Mode::SingleNodeWriter)];
    assert!(
        expect_code(
            c.controller.create_volume(r.clone()).await,
            Code::InvalidArgument
        )
        .contains("ntfs")
    );
    r.volume_capabilities = vec![snw.clone()];
    r.parameters = params(&[("fstype", "ext4")]);
    assert!(
        expect_code(
            c.controller.create_volume(r.clone()).await,
            Code::InvalidArgument
        )
        .contains("\"fstype\"")
    );
    r.parameters = params(&[("pool", "nope")]);
    assert!(
        expect_code(
            c.controller.create_volume(r.clone()).await,
            Code::InvalidArgument
        )
        .contains("nope")
    );
    r.parameters = params(&[("csi.storage.k8s.io/pvc/name", "x")]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    expect_code(
        c.controller.create_volume(r.clone()).await,
        Code::InvalidArgument,
    );
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 10 * MIB,
        limit_bytes: 5 * MIB,
    });
    expect_code(
        c.controller.create_volume(r.clone()).await,
        Code::InvalidArgument,
    );
    // xfs needs 300 MiB; a 100 MiB limit cannot be met.
    r.parameters = params(&[("fsType", "xfs")]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 0,
        limit_bytes: 100 * MIB,
    });
    expect_code(
        c.controller.create_volume(r.clone()).await,
        Code::OutOfRange,
    );
    // Topology that excludes this node.
    r.parameters.clear();
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: MIB,
        limit_bytes: 0,
    });
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: params(&[("topology.haina.dev/node", "elsewhere")]),
        }],
        preferred: vec![],
    });
    expect_code(
        c.controller.create_volume(r.clone()).await,
        Code::ResourceExhausted,
    );
    r.accessibility_requirements = None;
    // Sources that do not exist.
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "non-existing-snapshot-id".into(),
            },
        )),
    });
    expect_code(c.controller.create_volume(r.clone()).await, Code::NotFound);
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "default.missing".into(),
            },
        )),
    });
    expect_code(c.controller.create_volume(r.clone()).await, Code::NotFound);
    r.volume_content_source = None;
    // Same name, other size.
    let exact = csi::CapacityRange {
        required_bytes: 8 * MIB,
        limit_bytes: 8 * MIB,
    };
    r.capacity_range = Some(exact);
    let v = c
        .controller
        .create_volume(r.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.capacity_bytes, 8 * MIB);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 16 * MIB,
        limit_bytes: 16 * MIB,
    });
    expect_code(
        c.controller.create_volume(r.clone()).await,
        Code::AlreadyExists,
    );
    // A 128-byte name, and names that would escape the pool, are safe.
    for name in ["a".repeat(128), "../../etc/passwd".into(), "x/y\0z".into()] {
        let v = c
            .controller
            .create_volume(create_req(&name, MIB, snw.clone()))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert!(
            v.volume_id.len() <= 128 && !v.volume_id.contains('/'),
            "{}",
            v.volume_id
        );
        delete_volume(&mut c, &v.volume_id).await;
    }
    delete_volume(&mut c, &v.volume_id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_errors() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let snw = mount_cap("ext4", Mode::SingleNodeWriter);
    let del = |id: &str| csi::DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    };
    expect_code(
        c.controller.delete_volume(del("")).await,
        Code::InvalidArgument,
    );
    c.controller
        .delete_volume(del("fake-vol-id"))
        .await
        .unwrap();
    c.controller
        .delete_volume(del("default.never-created"))
        .await
        .unwrap();
    expect_code(
        c.controller.delete_volume(del("default/../../etc")).await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller.delete_volume(del(&"x".repeat(129))).await,
        Code::InvalidArgument,
    );

    let vol = c
        .controller
        .create_volume(create_req("ctl", 4 * MIB, snw.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    let publish = |vol: &str, node: &str, cap: Option<csi::VolumeCapability>, ro: bool| {
        csi::ControllerPublishVolumeRequest {
            volume_id: vol.into(),
            node_id: node.into(),
            volume_capability: cap,
            readonly: ro,
            ..Default::default()
        }
    };
    let node = server.node_id.clone();
    expect_code(
        c.controller
            .controller_publish_volume(publish("", &node, Some(snw.clone()), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller
            .controller_publish_volume(publish("fake-vol-id-1", "", Some(snw.clone()), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller
            .controller_publish_volume(publish("fake-vol-id-1", "fake-node", None, false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller
            .controller_publish_volume(publish(
                "fake-vol-id-1",
                "fake-node",
                Some(snw.clone()),
                false,
            ))
            .await,
        Code::NotFound,
    );
    expect_code(
        c.controller
            .controller_publish_volume(publish(&id, "fake-node-id-1", Some(snw.clone()), false))
            .await,
        Code::NotFound,
    );
    c.controller
        .controller_publish_volume(publish(&id, &node, Some(snw.clone()), false))
        .await
        .unwrap();
    expect_code(
        c.controller
            .controller_publish_volume(publish(&id, &node, Some(snw.clone()), true))
            .await,
        Code::AlreadyExists,
    );
    // A published volume cannot be deleted.
    let m = expect_code(
        c.controller.delete_volume(del(&id)).await,
        Code::FailedPrecondition,
    );
    assert!(m.contains(&node), "{m}");

    let got = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status.unwrap().published_node_ids, vec![node.clone()]);
    expect_code(
        c.controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: "fake-vol-id".into(),
            })
            .await,
        Code::NotFound,
    );

    let unpub = |vol: &str, node: &str| csi::ControllerUnpublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        ..Default::default()
    };
    expect_code(
        c.controller
            .controller_unpublish_volume(unpub("", &node))
            .await,
        Code::InvalidArgument,
    );
    c.controller
        .controller_unpublish_volume(unpub("fake-vol-id", &node))
        .await
        .unwrap();
    c.controller
        .controller_unpublish_volume(unpub(&id, &node))
        .await
        .unwrap();
    c.controller
        .controller_unpublish_volume(unpub(&id, &node))
        .await
        .unwrap();

    let validate =
        |vol: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.into(),
            volume_capabilities: caps,
            ..Default::default()
        };
    expect_code(
        c.controller
            .validate_volume_capabilities(validate("", vec![snw.clone()]))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller
            .validate_volume_capabilities(validate(&id, vec![]))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller
            .validate_volume_capabilities(validate("fake-vol-id-2", vec![snw.clone()]))
            .await,
        Code::NotFound,
    );
    let ok = c
        .controller
        .validate_volume_capabilities(validate(&id, vec![snw.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.confirmed.unwrap().volume_capabilities.len(), 1);
    let no = c
        .controller
        .validate_volume_capabilities(validate(
            &id,
            vec![mount_cap("ext4", Mode::MultiNodeReaderOnly)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        no.confirmed.is_none() && no.message.contains("MULTI_NODE_READER_ONLY"),
        "{}",
        no.message
    );

    // ListVolumes: paging, and tokens it never issued.
    for i in 0..4 {
        c.controller
            .create_volume(create_req(&format!("page-{i}"), MIB, snw.clone()))
            .await
            .unwrap();
    }
    let list = |max: i32, token: &str| csi::ListVolumesRequest {
        max_entries: max,
        starting_token: token.into(),
    };
    let all = c
        .controller
        .list_volumes(list(0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 5);
    let p1 = c
        .controller
        .list_volumes(list(2, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.entries.len(), 2);
    let p2 = c
        .controller
        .list_volumes(list(0, &p1.next_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.entries.len(), 3);
    assert!(p2.next_token.is_empty());
    expect_code(
        c.controller.list_volumes(list(0, "invalid-token")).await,
        Code::Aborted,
    );
    expect_code(
        c.controller.list_volumes(list(-1, "")).await,
        Code::InvalidArgument,
    );

    // GetCapacity: the pool filesystem's free space, zero for another node.
    let cap = c
        .controller
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
    let elsewhere = csi::GetCapacityRequest {
        accessible_topology: Some(csi::Topology {
            segments: params(&[("topology.haina.dev/node", "elsewhere")]),
        }),
        ..Default::default()
    };
    assert_eq!(
        c.controller
            .get_capacity(elsewhere)
            .await
            .unwrap()
            .into_inner()
            .available_capacity,
        0
    );

    // Expansion.
    let expand = |vol: &str, req: i64, lim: i64| csi::ControllerExpandVolumeRequest {
        volume_id: vol.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        }),
        ..Default::default()
    };
    expect_code(
        c.controller
            .controller_expand_volume(expand("", MIB, 0))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.controller
            .controller_expand_volume(expand("fake-vol-id", MIB, 0))
            .await,
        Code::NotFound,
    );
    expect_code(
        c.controller
            .controller_expand_volume(expand(&id, MIB, 2 * MIB))
            .await,
        Code::OutOfRange,
    );
    let grown = c
        .controller
        .controller_expand_volume(expand(&id, 12 * MIB, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 12 * MIB);
    assert!(grown.node_expansion_required);
    // Repeat: idempotent.
    assert_eq!(
        c.controller
            .controller_expand_volume(expand(&id, 12 * MIB, 0))
            .await
            .unwrap()
            .into_inner()
            .capacity_bytes,
        12 * MIB
    );

    for e in c
        .controller
        .list_volumes(list(0, ""))
        .await
        .unwrap()
        .into_inner()
        .entries
    {
        c.controller
            .delete_volume(del(&e.volume.unwrap().volume_id))
            .await
            .unwrap();
    }
    assert!(
        c.controller
            .list_volumes(list(0, ""))
            .await
            .unwrap()
            .into_inner()
            .entries
            .is_empty()
    );
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn node_errors() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let snw = mount_cap("ext4", Mode::SingleNodeWriter);
    let staging = server.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let st = staging.to_str().unwrap();
    let target = server.path("target");
    let tg = target.to_str().unwrap();

    expect_code(
        c.node
            .node_stage_volume(stage_req("", st, Some(snw.clone())))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_stage_volume(stage_req("fake-vol-id", "", Some(snw.clone())))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_stage_volume(stage_req("fake-vol-id", "relative/path", Some(snw.clone())))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_stage_volume(stage_req("fake-vol-id", "/a/../b", Some(snw.clone())))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_stage_volume(stage_req("fake-vol-id", st, None))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_stage_volume(stage_req("fake-vol-id", st, Some(snw.clone())))
            .await,
        Code::NotFound,
    );
    expect_code(
        c.node
            .node_stage_volume(stage_req("default.missing", st, Some(snw.clone())))
            .await,
        Code::NotFound,
    );

    let vol = c
        .controller
        .create_volume(create_req("node-errs", 8 * MIB, snw.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.as_str();
    let m = expect_code(
        c.node
            .node_stage_volume(stage_req(
                id,
                st,
                Some(mount_cap("ext4", Mode::MultiNodeMultiWriter)),
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(m.contains("MULTI_NODE"), "{m}");
    // Publishing before staging.
    expect_code(
        c.node
            .node_publish_volume(publish_req(id, st, tg, Some(snw.clone()), false))
            .await,
        Code::FailedPrecondition,
    );
    expect_code(
        c.node
            .node_publish_volume(publish_req("", st, tg, Some(snw.clone()), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_publish_volume(publish_req(id, st, "", Some(snw.clone()), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_publish_volume(publish_req(id, st, tg, None, false))
            .await,
        Code::InvalidArgument,
    );

    c.node
        .node_stage_volume(stage_req(id, st, Some(snw.clone())))
        .await
        .unwrap();
    c.node
        .node_publish_volume(publish_req(id, st, tg, Some(snw.clone()), false))
        .await
        .unwrap();
    // Same target, other read-only flag.
    expect_code(
        c.node
            .node_publish_volume(publish_req(id, st, tg, Some(snw.clone()), true))
            .await,
        Code::AlreadyExists,
    );
    // A read-only publish at another target is really read-only.
    let ro = server.path("target-ro");
    c.node
        .node_publish_volume(publish_req(
            id,
            st,
            ro.to_str().unwrap(),
            Some(snw.clone()),
            true,
        ))
        .await
        .unwrap();
    let err = std::fs::write(ro.join("x"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    // Unstage while published is refused, naming the targets.
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: st.into(),
    };
    let m = expect_code(
        c.node.node_unstage_volume(unstage.clone()).await,
        Code::FailedPrecondition,
    );
    assert!(m.contains(tg), "{m}");

    let stats = |vol: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: vol.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    expect_code(
        c.node.node_get_volume_stats(stats("", tg)).await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node.node_get_volume_stats(stats(id, "")).await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_get_volume_stats(stats("fake-vol-id", "some/path"))
            .await,
        Code::NotFound,
    );
    expect_code(
        c.node.node_get_volume_stats(stats(id, "some/path")).await,
        Code::NotFound,
    );
    expect_code(
        c.node
            .node_get_volume_stats(stats(id, "/nonexistent/haina"))
            .await,
        Code::NotFound,
    );

    let unpublish = |vol: &str, path: &str| csi::NodeUnpublishVolumeRequest {
        volume_id: vol.into(),
        target_path: path.into(),
    };
    expect_code(
        c.node.node_unpublish_volume(unpublish("", tg)).await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node.node_unpublish_volume(unpublish(id, "")).await,
        Code::InvalidArgument,
    );
    for p in [tg, ro.to_str().unwrap()] {
        c.node
            .node_unpublish_volume(unpublish(id, p))
            .await
            .unwrap();
        c.node
            .node_unpublish_volume(unpublish(id, p))
            .await
            .unwrap();
    }
    // After unpublish the stats path is gone: NOT_FOUND.
    expect_code(
        c.node.node_get_volume_stats(stats(id, tg)).await,
        Code::NotFound,
    );
    expect_code(
        c.node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: "".into(),
                staging_target_path: st.into(),
            })
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        c.node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: "".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    c.node.node_unstage_volume(unstage.clone()).await.unwrap();
    c.node.node_unstage_volume(unstage).await.unwrap();
    delete_volume(&mut c, id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_operation_on_a_volume_is_aborted() {
    let server = Server::start_with(&[("HAINA_FAILPOINTS", "stage-before-mount=sleep-1500")]).await;
    let mut c = server.clients().await;
    let snw = mount_cap("ext4", Mode::SingleNodeWriter);
    let vol = c
        .controller
        .create_volume(create_req("busy", 8 * MIB, snw.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let staging = server.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let req = stage_req(&vol.volume_id, staging.to_str().unwrap(), Some(snw.clone()));
    let mut n2 = c.node.clone();
    let first = tokio::spawn({
        let req = req.clone();
        async move { n2.node_stage_volume(req).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let m = expect_code(c.node.node_stage_volume(req.clone()).await, Code::Aborted);
    assert!(m.contains(&vol.volume_id), "{m}");
    first.await.unwrap().unwrap();
    // Once the first call is done, the retry converges.
    c.node.node_stage_volume(req).await.unwrap();
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    delete_volume(&mut c, &vol.volume_id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let secret = "AQBsup3rS3cretK3y==";
    let secrets = params(&[("userID", "admin"), ("userKey", secret)]);
    let mut r = create_req(
        "secretive",
        4 * MIB,
        mount_cap("ext4", Mode::SingleNodeWriter),
    );
    r.secrets = secrets.clone();
    let v = c
        .controller
        .create_volume(r.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    r.parameters = params(&[("bogus", "x")]);
    expect_code(c.controller.create_volume(r).await, Code::InvalidArgument);
    let staging = server.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut s = stage_req(
        &v.volume_id,
        staging.to_str().unwrap(),
        Some(mount_cap("ext4", Mode::SingleNodeWriter)),
    );
    s.secrets = secrets.clone();
    c.node.node_stage_volume(s).await.unwrap();
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: "s".into(),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: secrets.clone(),
        })
        .await
        .unwrap();
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id,
            secrets,
        })
        .await
        .unwrap();
    let logs = server.logs();
    assert!(
        logs.contains("CreateVolume"),
        "the RPC log is missing:\n{logs}"
    );
    assert!(
        !logs.contains(secret),
        "a secret leaked into the logs:\n{logs}"
    );
    assert!(!logs.contains("AQB"), "a key prefix leaked into the logs");
}

/// mkfs and mount options come from an allow-list: an option that names a
/// path or a device, copies host files, or can take the node down is
/// INVALID_ARGUMENT naming it, at CreateVolume (parameters and the
/// capability's mount_flags), ControllerPublishVolume and
/// ValidateVolumeCapabilities, and nothing is created.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_mkfs_and_mount_options_are_refused_naming_them() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let with_flags = |fs: &str, flags: &[&str]| {
        let mut cap = mount_cap(fs, Mode::SingleNodeWriter);
        if let Some(csi::volume_capability::AccessType::Mount(m)) = &mut cap.access_type {
            m.mount_flags = flags.iter().map(|f| f.to_string()).collect();
        }
        cap
    };
    // (parameters, capability, what the message must name)
    type Case<'a> = (Vec<(&'a str, &'a str)>, csi::VolumeCapability, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("fsType", "xfs"),
                ("mkfsOptions", "-l logdev=/dev/loop0,size=64m"),
            ],
            with_flags("", &[]),
            "logdev=/dev/loop0",
        ),
        (
            vec![("mkfsOptions", "-d /etc")],
            with_flags("ext4", &[]),
            "-d",
        ),
        (
            vec![("fsType", "xfs"), ("mkfsOptions", "-p /etc/protofile")],
            with_flags("xfs", &[]),
            "-p",
        ),
        (
            vec![("mkfsOptions", "-b 4096 /dev/sda")],
            with_flags("ext4", &[]),
            "/dev/sda",
        ),
        (
            vec![("mkfsOptions", "-J device=/dev/sdb")],
            with_flags("ext4", &[]),
            "device=/dev/sdb",
        ),
        (
            vec![("mountOptions", "noatime,errors=panic")],
            with_flags("ext4", &[]),
            "errors=panic",
        ),
        (
            vec![("mountOptions", "journal_path=/dev/sdb")],
            with_flags("ext4", &[]),
            "journal_path=/dev/sdb",
        ),
        (
            vec![("fsType", "xfs"), ("mountOptions", "rtdev=/dev/sdc")],
            with_flags("xfs", &[]),
            "rtdev=/dev/sdc",
        ),
        (vec![], with_flags("ext4", &["errors=panic"]), "mount_flags"),
        (
            vec![],
            with_flags("ext4", &["noatime", "usrjquota=/etc/shadow"]),
            "usrjquota",
        ),
        (vec![], with_flags("xfs", &["logdev=/dev/sdb"]), "logdev"),
        // ext4 syntax is checked against the filesystem the capability asks for.
        (
            vec![("mkfsOptions", "-b 4096")],
            with_flags("xfs", &[]),
            "-b",
        ),
    ];
    for (i, (kv, cap, named)) in cases.into_iter().enumerate() {
        let mut r = create_req(&format!("hostile-{i}"), 300 * MIB, cap);
        r.parameters = params(&kv);
        let m = expect_code(c.controller.create_volume(r).await, Code::InvalidArgument);
        assert!(m.contains(named), "case {i} ({kv:?}): {m}");
    }
    let leftovers: Vec<_> = ["img", "tmp", "json"]
        .iter()
        .flat_map(|e| files_with_ext(&server.data_dir(), e))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    // Allowed options pass, and later calls check the flags too.
    let mut r = create_req("tuned", 16 * MIB, with_flags("ext4", &["noatime", "nodev"]));
    r.parameters = params(&[
        ("mkfsOptions", "-m 0 -i 8192 -L data -E stride=16"),
        ("mountOptions", "errors=remount-ro,commit=30"),
    ]);
    let vol = c
        .controller
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    let m = expect_code(
        c.controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: server.node_id.clone(),
                volume_capability: Some(with_flags("", &["errors=panic"])),
                volume_context: vol.volume_context.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(m.contains("errors=panic"), "{m}");
    let v = c
        .controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![with_flags("ext4", &["journal_dev=2049"])],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        v.confirmed.is_none() && v.message.contains("journal_dev"),
        "{v:?}"
    );
    let v = c
        .controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![with_flags("ext4", &["noatime"])],
            parameters: params(&[("mkfsOptions", "-z /tmp/undo")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.confirmed.is_none() && v.message.contains("-z"), "{v:?}");
    delete_volume(&mut c, &id).await;
    server.assert_no_leaks();
}

/// Messages echo at most a bounded prefix of client input: a 10 KB field
/// still gets its status code and a message naming the field (echoed whole,
/// it overflowed gRPC's metadata and the client saw a protocol error).
#[tokio::test(flavor = "multi_thread")]
async fn huge_client_input_is_echoed_bounded() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let snw = mount_cap("ext4", Mode::SingleNodeWriter);
    // `%` is percent-encoded in the grpc-message header: 30 KB on the wire.
    let huge = "%".repeat(10_000);
    let bounded = |m: &str| assert!(m.len() < 1024, "{} bytes: {m:.200}", m.len());

    let vol = c
        .controller
        .create_volume(create_req("echo", MIB, snw.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let m = expect_code(
        c.controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                node_id: huge.clone(),
                volume_capability: Some(snw.clone()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        m.contains("node_id") && m.contains("more bytes"),
        "{m:.200}"
    );
    bounded(&m);

    let mut r = create_req("echo-params", MIB, snw.clone());
    r.parameters = params(&[(huge.as_str(), "x")]);
    let m = expect_code(c.controller.create_volume(r).await, Code::InvalidArgument);
    assert!(m.contains("parameters"), "{m:.200}");
    bounded(&m);

    let mut r = create_req("echo-mkfs", MIB, snw.clone());
    r.parameters = params(&[("mkfsOptions", &format!("-L {huge}"))]);
    let m = expect_code(c.controller.create_volume(r).await, Code::InvalidArgument);
    assert!(m.contains("mkfsOptions"), "{m:.200}");
    bounded(&m);

    // A long name whose volume exists with another size: ALREADY_EXISTS.
    let long_name = "v".repeat(10_000);
    c.controller
        .create_volume(create_req(&long_name, MIB, snw.clone()))
        .await
        .unwrap();
    let m = expect_code(
        c.controller
            .create_volume(create_req(&long_name, 2 * MIB, snw.clone()))
            .await,
        Code::AlreadyExists,
    );
    bounded(&m);

    let m = expect_code(
        c.controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: format!("default.{huge}"),
            })
            .await,
        Code::Aborted,
    );
    bounded(&m);

    for e in c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
    {
        delete_volume(&mut c, &e.volume.unwrap().volume_id).await;
    }
    server.assert_no_leaks();
}

/// An empty config file (an empty ConfigMap) is refused at start-up, never
/// read as "the embedded default local pool".
#[test]
fn serve_refuses_a_config_file_without_pools() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "# the ConfigMap was empty\n").unwrap();
    let log = dir.path().join("serve.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_haina"))
        .args(["serve", "--node-id", "n", "--endpoint"])
        .arg(format!("unix://{}", dir.path().join("csi.sock").display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "served an empty config ({status:?}): {stderr}"
    );
    assert!(
        stderr.contains("empty.toml") && stderr.contains("no pool"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data/pools").exists(),
        "a local pool was created"
    );
}
