//! QoS limits (mutable parameters) on the local pool, on real loop devices:
//! fio through the mounted volume (and on the raw block device) stays under
//! each limit, a ControllerModifyVolume changes it on the live mount, it
//! survives an unstage/restage and a plugin restart, and no throttle rule
//! is left on a device after unstage. Plus the error paths, and the
//! csi-sanity ModifyVolume specs for the local fs and block configurations.
//!
//! Throughput is only ever bounded from above (≤ 1.25 × the limit): the
//! machine is shared, so a run may be slow for reasons of its own.

mod common;
#[path = "common/fio.rs"]
mod fio;

use std::collections::HashMap;

use common::*;
use fio::{Job, at_most, sanity_params, sanity_specs};
use haina_csi::v1 as csi;

const MIB: i64 = 1 << 20;

async fn modify(
    c: &mut Clients,
    id: &str,
    kv: &[(&str, &str)],
) -> Result<tonic::Response<csi::ControllerModifyVolumeResponse>, tonic::Status> {
    c.controller
        .controller_modify_volume(csi::ControllerModifyVolumeRequest {
            volume_id: id.into(),
            mutable_parameters: params(kv),
            ..Default::default()
        })
        .await
}

async fn create_with(
    c: &mut Clients,
    name: &str,
    cap: csi::VolumeCapability,
    mutable: &[(&str, &str)],
) -> String {
    let mut req = create_req(name, 256 * MIB, cap);
    req.mutable_parameters = params(mutable);
    c.controller
        .create_volume(req)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// The loop device of the one volume attached under `server`'s dir.
fn the_device(server: &Server) -> String {
    let loops = loops_under(server.dir.path());
    assert_eq!(loops.len(), 1, "{loops:?}");
    loops[0].0.clone()
}

/// The QoS limits in a local volume's record.
fn record_qos(server: &Server, name: &str) -> serde_json::Value {
    let p = server
        .data_dir()
        .join(format!("pools/default/volumes/{name}.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v["qos"].clone()
}

fn skip(test: &str) -> bool {
    if !haina_sys::is_root() || !fio::have_v1_blkio() {
        println!("{test}: skipped (needs root and cgroup v1 blkio throttle files)");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_local_fs_limits_hold_change_live_and_survive_restage() {
    if skip("qos_local_fs_limits_hold_change_live_and_survive_restage") {
        return;
    }
    let mut rules = fio::RuleGuard::default();
    let mut server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let id = create_with(
        &mut c,
        "qos-fs",
        cap.clone(),
        &[("qosWriteIops", "100"), ("qosReadIops", "150")],
    )
    .await;
    let target = mount_volume(&mut c, &server, &id, &cap, "a").await;
    let dev = the_device(&server);
    let num = fio::dev_num(&dev);
    rules.watch(&num);
    assert_eq!(fio::rules(&num), [150, 100, 0, 0], "rules of {dev} ({num})");
    let data = target.join("data");
    fio::fill(&data, 24);

    // Created with limits: both hold at once.
    let r = fio::run(&[
        Job::new("randwrite", "4k", &data),
        Job::new("randread", "4k", &data),
    ]);
    at_most("write IOPS, limit 100", r[0].iops, 100.0);
    at_most("read IOPS, limit 150", r[1].iops, 150.0);

    // A lower write limit and a read bandwidth limit, on the live mount.
    modify(
        &mut c,
        &id,
        &[("qosWriteIops", "40"), ("qosReadBps", "2Mi")],
    )
    .await
    .unwrap();
    assert_eq!(fio::rules(&num), [150, 40, 2 << 20, 0]);
    let r = fio::run(&[
        Job::new("randwrite", "4k", &data),
        Job::new("randread", "64k", &data),
    ]);
    at_most("write IOPS, limit 40", r[0].iops, 40.0);
    at_most("read bytes/s, limit 2 MiB/s", r[1].bps, (2 << 20) as f64);

    // 0 = unlimited: those rules go; a write bandwidth limit comes.
    modify(
        &mut c,
        &id,
        &[
            ("qosWriteIops", "0"),
            ("qosReadIops", "0"),
            ("qosReadBps", "0"),
            ("qosWriteBps", "3Mi"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(fio::rules(&num), [0, 0, 0, 3 << 20]);
    // Idempotent.
    modify(&mut c, &id, &[("qosWriteBps", "3Mi")])
        .await
        .unwrap();

    // The record survives a kill -9 of the plugin, and a restage applies
    // it to whatever device the volume gets next.
    server.kill9();
    server.spawn().await;
    let mut c = server.clients().await;
    unmount_volume(&mut c, &server, &id, "a").await;
    assert_eq!(
        fio::rules(&num),
        [0; 4],
        "a rule is left on {dev} after unstage"
    );
    let target = mount_volume(&mut c, &server, &id, &cap, "b").await;
    let dev2 = the_device(&server);
    let num2 = fio::dev_num(&dev2);
    rules.watch(&num2);
    assert_eq!(fio::rules(&num2), [0, 0, 0, 3 << 20], "rules of {dev2}");
    let r = fio::run(&[Job::new("write", "64k", &target.join("data"))]);
    at_most(
        "write bytes/s after restage, limit 3 MiB/s",
        r[0].bps,
        (3 << 20) as f64,
    );

    unmount_volume(&mut c, &server, &id, "b").await;
    assert_eq!(
        fio::rules(&num2),
        [0; 4],
        "a rule is left on {dev2} after unstage"
    );
    delete_volume(&mut c, &id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_local_block_limits_hold_and_change_live() {
    if skip("qos_local_block_limits_hold_and_change_live") {
        return;
    }
    let mut rules = fio::RuleGuard::default();
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = create_with(
        &mut c,
        "qos-block",
        cap.clone(),
        &[("qosWriteBps", "4Mi"), ("qosReadIops", "120")],
    )
    .await;
    let target = mount_volume(&mut c, &server, &id, &cap, "a").await;
    let dev = the_device(&server);
    let num = fio::dev_num(&dev);
    rules.watch(&num);
    assert_eq!(fio::rules(&num), [120, 0, 0, 4 << 20]);
    let r = fio::run(&[
        Job::new("write", "64k", &target),
        Job::new("randread", "4k", &target),
    ]);
    at_most(
        "block write bytes/s, limit 4 MiB/s",
        r[0].bps,
        (4 << 20) as f64,
    );
    at_most("block read IOPS, limit 120", r[1].iops, 120.0);

    modify(&mut c, &id, &[("qosWriteBps", "0"), ("qosWriteIops", "30")])
        .await
        .unwrap();
    let r = fio::run(&[Job::new("randwrite", "4k", &target)]);
    at_most("block write IOPS, limit 30", r[0].iops, 30.0);

    unmount_volume(&mut c, &server, &id, "a").await;
    assert_eq!(
        fio::rules(&num),
        [0; 4],
        "a rule is left on {dev} after unstage"
    );
    delete_volume(&mut c, &id).await;
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_errors_name_the_key_and_value() {
    if !haina_sys::is_root() {
        println!("qos_errors_name_the_key_and_value: skipped (needs root)");
        return;
    }
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);

    let caps = c
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use csi::controller_service_capability::{Type, rpc::Type as Rpc};
    assert!(
        caps.capabilities.iter().any(
            |c| matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == Rpc::ModifyVolume as i32)
        )
    );

    let id = create_with(&mut c, "qos-err", cap.clone(), &[("qosWriteIops", "100")]).await;
    // Validation, key by key.
    for (kv, named) in [
        (("XXX_FakeKey", "XXX_FakeValue"), vec!["XXX_FakeKey"]),
        (("fsType", "xfs"), vec!["fsType", "not mutable"]),
        (("qosWriteIops", "-1"), vec!["qosWriteIops", "\"-1\""]),
        (("qosReadBps", "1.5Mi"), vec!["qosReadBps", "\"1.5Mi\""]),
        (("qosReadIops", "1k"), vec!["qosReadIops", "\"1k\""]),
        (
            ("qosWriteBps", "99999999999999999999"),
            vec!["qosWriteBps", "largest"],
        ),
    ] {
        let m = expect_code(
            modify(&mut c, &id, &[kv]).await,
            tonic::Code::InvalidArgument,
        );
        for n in named {
            assert!(m.contains(n), "{kv:?}: {m:?} does not name {n}");
        }
    }
    // A bad key fails the whole call: the good one next to it is not applied.
    expect_code(
        modify(&mut c, &id, &[("qosWriteIops", "5"), ("bogus", "1")]).await,
        tonic::Code::InvalidArgument,
    );
    expect_code(
        modify(&mut c, "", &[("qosWriteIops", "5")]).await,
        tonic::Code::InvalidArgument,
    );
    for missing in [
        "default.no-such-volume",
        "non-existing-volume-id",
        "nopool.x",
    ] {
        expect_code(
            modify(&mut c, missing, &[("qosWriteIops", "5")]).await,
            tonic::Code::NotFound,
        );
    }
    // An empty map changes nothing and succeeds.
    modify(&mut c, &id, &[]).await.unwrap();
    assert_eq!(record_qos(&server, "qos-err")["writeIops"], 100);

    // CreateVolume: the same name with other mutable parameters is another
    // volume; the same ones are the same volume.
    let again = |mutable: &[(&str, &str)]| {
        let mut req = create_req("qos-err", 256 * MIB, cap.clone());
        req.mutable_parameters = params(mutable);
        req
    };
    c.controller
        .create_volume(again(&[("qosWriteIops", "100")]))
        .await
        .unwrap();
    let m = expect_code(
        c.controller
            .create_volume(again(&[("qosWriteIops", "200")]))
            .await,
        tonic::Code::AlreadyExists,
    );
    assert!(m.contains("qosWriteIops=100"), "{m}");
    expect_code(
        c.controller.create_volume(again(&[])).await,
        tonic::Code::AlreadyExists,
    );
    expect_code(
        c.controller
            .create_volume(again(&[("XXX_FakeKey", "XXX_FakeValue")]))
            .await,
        tonic::Code::InvalidArgument,
    );

    // A StorageClass default, overridden by the mutable parameter.
    let mut req = create_req("qos-sc", 256 * MIB, cap.clone());
    req.parameters = params(&[("qosWriteIops", "50"), ("qosReadIops", "60")]);
    req.mutable_parameters = params(&[("qosWriteIops", "70")]);
    c.controller.create_volume(req.clone()).await.unwrap();
    let q = record_qos(&server, "qos-sc");
    assert_eq!(
        (&q["writeIops"], &q["readIops"]),
        (&70.into(), &60.into()),
        "{q}"
    );
    req.parameters = params(&[("qosWriteIops", "abc")]);
    let m = expect_code(
        c.controller.create_volume(req).await,
        tonic::Code::InvalidArgument,
    );
    assert!(
        m.contains("parameters") && m.contains("qosWriteIops"),
        "{m}"
    );

    // ValidateVolumeCapabilities confirms valid mutable parameters only.
    let validate = |mutable: HashMap<String, String>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![cap.clone()],
        mutable_parameters: mutable,
        ..Default::default()
    };
    let ok = c
        .controller
        .validate_volume_capabilities(validate(sanity_params()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.confirmed.unwrap().mutable_parameters, sanity_params());
    let bad = c
        .controller
        .validate_volume_capabilities(validate(params(&[("qosWriteIops", "x")])))
        .await
        .unwrap()
        .into_inner();
    assert!(bad.confirmed.is_none());
    assert!(bad.message.contains("qosWriteIops"), "{}", bad.message);

    for v in [id.as_str(), "default.qos-sc"] {
        delete_volume(&mut c, v).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_a_pool_that_cannot_enforce_limits_refuses_them() {
    if !haina_sys::is_root() {
        println!("qos_a_pool_that_cannot_enforce_limits_refuses_them: skipped (needs root)");
        return;
    }
    let server =
        Server::start_with_config(&[], "[pools.slow]\nkind = \"local\"\nqos = \"off\"\n").await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut req = create_req("limited", 64 * MIB, cap.clone());
    req.mutable_parameters = params(&[("qosWriteIops", "10")]);
    let m = expect_code(
        c.controller.create_volume(req).await,
        tonic::Code::InvalidArgument,
    );
    assert!(
        m.contains("qosWriteIops") && m.contains("qos = \"off\""),
        "{m}"
    );
    let mut req = create_req("limited", 64 * MIB, cap.clone());
    req.parameters = params(&[("qosReadBps", "1Mi")]);
    let m = expect_code(
        c.controller.create_volume(req).await,
        tonic::Code::InvalidArgument,
    );
    assert!(m.contains("parameters") && m.contains("qosReadBps"), "{m}");
    // GetCapacity agrees: nothing fits a StorageClass with limits here.
    let cap_left = c
        .controller
        .get_capacity(csi::GetCapacityRequest {
            volume_capabilities: vec![cap.clone()],
            parameters: params(&[("qosReadBps", "1Mi")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap_left.available_capacity, 0);
    // An unlimited volume is fine, but not a modify that would limit it.
    let id = create_with(&mut c, "plain", cap, &[]).await;
    let m = expect_code(
        modify(&mut c, &id, &[("qosWriteIops", "10")]).await,
        tonic::Code::InvalidArgument,
    );
    assert!(m.contains("qosWriteIops") && m.contains("slow"), "{m}");
}

/// csi-sanity's ModifyVolume specs (and its CreateVolume ones with a
/// VolumeAttributesClass), with the mutable parameters the docs give it,
/// on the local pool's fs and block configurations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_sanity_modify_specs_local() {
    if !haina_sys::is_root() {
        println!("qos_sanity_modify_specs_local: skipped (needs root)");
        return;
    }
    let server = Server::start().await;
    let mut c = server.clients().await;
    for (tag, cap) in [
        ("fs", mount_cap("", Mode::SingleNodeWriter)),
        ("block", block_cap(Mode::SingleNodeWriter)),
    ] {
        sanity_specs(&mut c, tag, cap, HashMap::new(), HashMap::new()).await;
    }
}

/// Benchmark (ignored; prints ratios, asserts nothing about them): fio's
/// measured rate against each limit on the local pool.
///
///     cargo test -p haina --release --test qos -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn qos_bench_local() {
    if skip("qos_bench_local") {
        return;
    }
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = create_with(&mut c, "qos-bench", cap.clone(), &[]).await;
    let target = mount_volume(&mut c, &server, &id, &cap, "a").await;
    let mut rules = fio::RuleGuard::default();
    rules.watch(&fio::dev_num(&the_device(&server)));
    fio::BenchCase::print_header();
    for case in &fio::BENCH {
        modify(&mut c, &id, &fio::NO_LIMITS).await.unwrap();
        let free = fio::run(&[case.job(&target)])[0];
        modify(&mut c, &id, &[(case.key, &case.limit_param())])
            .await
            .unwrap();
        let r = fio::run(&[case.job(&target)])[0];
        case.print_row("local block", r, free);
    }
    unmount_volume(&mut c, &server, &id, "a").await;
}
