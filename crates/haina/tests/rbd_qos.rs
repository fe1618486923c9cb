//! QoS limits (mutable parameters) on an RBD pool, against the real
//! cluster: the limits are librbd's own (`conf_rbd_qos_*` image metadata),
//! fio through ext4 on the FUSE mounter (O_DIRECT) and on the raw block
//! device stays under each limit, a ControllerModifyVolume changes it on
//! the live mount, it survives an unstage/restage (a new FUSE server), and
//! clones and restores get exactly the limits they are created with. Plus
//! the krbd refusal and the csi-sanity ModifyVolume specs for the RBD fs
//! and block configurations.
//!
//! Throughput is only ever bounded from above (≤ 1.25 × the limit).

mod common;
#[path = "common/fio.rs"]
mod fio;
#[path = "common/rbd.rs"]
mod rbd;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use fio::{Job, at_most, sanity_specs};
use haina_csi::v1 as csi;
use rbd::*;

async fn modify(
    ceph: &Ceph,
    c: &mut Clients,
    id: &str,
    kv: &[(&str, &str)],
) -> Result<tonic::Response<csi::ControllerModifyVolumeResponse>, tonic::Status> {
    c.controller
        .controller_modify_volume(csi::ControllerModifyVolumeRequest {
            volume_id: id.into(),
            mutable_parameters: params(kv),
            secrets: ceph.secrets(),
        })
        .await
}

/// The image's `conf_rbd_qos_*` metadata, keys without the prefix.
fn conf(ceph: &Ceph, image: &str) -> BTreeMap<String, String> {
    let img = ceph.connect().open_read_only(image).unwrap();
    img.metadata_list()
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("conf_rbd_qos_")?.to_string(), v)))
        .collect()
}

fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create_with(
    ceph: &Ceph,
    c: &mut Clients,
    name: &str,
    cap: csi::VolumeCapability,
    mutable: &[(&str, &str)],
) -> String {
    let mut req = create(ceph, "ceph", name, 128 * MIB, cap);
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

/// A ControllerModifyVolume reaches the FUSE server's librbd through a
/// header update; give it a moment before measuring.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_qos_fs_limits_hold_change_live_and_survive_restage() {
    let Some(ceph) = Ceph::from_env("rbd_qos_fs_limits_hold_change_live_and_survive_restage")
    else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let name = plugin.unique("qos-fs");
    let image = format!("csi-vol-{name}");
    let cap = ext4();
    let id = create_with(
        &ceph,
        &mut c,
        &name,
        cap.clone(),
        &[("qosWriteIops", "100"), ("qosReadIops", "150")],
    )
    .await;
    assert_eq!(
        conf(&ceph, &image),
        kv(&[("read_iops_limit", "150"), ("write_iops_limit", "100")])
    );
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "a")
        .await
        .unwrap();
    let data = m.target.join("data");
    fio::fill(&data, 24);
    let r = fio::run(&[
        Job::new("randwrite", "4k", &data),
        Job::new("randread", "4k", &data),
    ]);
    at_most("rbd fs write IOPS, limit 100", r[0].iops, 100.0);
    at_most("rbd fs read IOPS, limit 150", r[1].iops, 150.0);

    // Live, through the running FUSE server.
    modify(
        &ceph,
        &mut c,
        &id,
        &[("qosWriteIops", "40"), ("qosReadBps", "2Mi")],
    )
    .await
    .unwrap();
    assert_eq!(
        conf(&ceph, &image),
        kv(&[
            ("read_bps_limit", "2097152"),
            ("read_iops_limit", "150"),
            ("write_iops_limit", "40")
        ])
    );
    settle().await;
    let r = fio::run(&[
        Job::new("randwrite", "4k", &data),
        Job::new("randread", "64k", &data),
    ]);
    at_most("rbd fs write IOPS, limit 40", r[0].iops, 40.0);
    at_most(
        "rbd fs read bytes/s, limit 2 MiB/s",
        r[1].bps,
        (2 << 20) as f64,
    );

    // 0 removes a key; a bandwidth limit comes.
    modify(
        &ceph,
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
    assert_eq!(conf(&ceph, &image), kv(&[("write_bps_limit", "3145728")]));
    modify(&ceph, &mut c, &id, &[("qosWriteBps", "3Mi")])
        .await
        .unwrap();

    // A new FUSE server (unstage + stage) reads them from the image.
    unmount_on(&plugin, &m).await;
    assert!(plugin.fuse_servers().is_empty());
    let m = mount_on(&ceph, &plugin, &id, &cap, "b", Default::default())
        .await
        .unwrap();
    let r = fio::run(&[Job::new("write", "64k", &m.target.join("data"))]);
    at_most(
        "rbd fs write bytes/s after restage, limit 3 MiB/s",
        r[0].bps,
        (3 << 20) as f64,
    );
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_qos_block_limits_hold_and_change_live() {
    let Some(ceph) = Ceph::from_env("rbd_qos_block_limits_hold_and_change_live") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let name = plugin.unique("qos-blk");
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = create_with(
        &ceph,
        &mut c,
        &name,
        cap.clone(),
        &[("qosWriteBps", "4Mi"), ("qosReadIops", "120")],
    )
    .await;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "a")
        .await
        .unwrap();
    let r = fio::run(&[
        Job::new("write", "64k", &m.target),
        Job::new("randread", "4k", &m.target),
    ]);
    at_most(
        "rbd block write bytes/s, limit 4 MiB/s",
        r[0].bps,
        (4 << 20) as f64,
    );
    at_most("rbd block read IOPS, limit 120", r[1].iops, 120.0);
    modify(
        &ceph,
        &mut c,
        &id,
        &[("qosWriteBps", "0"), ("qosWriteIops", "30")],
    )
    .await
    .unwrap();
    settle().await;
    let r = fio::run(&[Job::new("randwrite", "4k", &m.target)]);
    at_most("rbd block write IOPS, limit 30", r[0].iops, 30.0);
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
}

/// librbd copies a parent's metadata into a clone: clones and restores of
/// a limited volume must get the limits they are created with, no others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_qos_clones_and_restores_do_not_inherit_limits() {
    let Some(ceph) = Ceph::from_env("rbd_qos_clones_and_restores_do_not_inherit_limits") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller").await;
    let mut c = plugin.clients().await;
    let cap = ext4();
    let src_name = plugin.unique("qos-src");
    let src = create_with(
        &ceph,
        &mut c,
        &src_name,
        cap.clone(),
        &[("qosWriteIops", "10"), ("qosReadBps", "1Mi")],
    )
    .await;
    let from = |name: &str, source: csi::volume_content_source::Type, mutable: &[(&str, &str)]| {
        let mut req = create(&ceph, "ceph", name, 128 * MIB, cap.clone());
        req.volume_content_source = Some(csi::VolumeContentSource {
            r#type: Some(source),
        });
        req.mutable_parameters = params(mutable);
        req
    };
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let clone = plugin.unique("qos-clone");
    let v = c
        .controller
        .create_volume(from(
            &clone,
            Type::Volume(VolumeSource {
                volume_id: src.clone(),
            }),
            &[],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(conf(&ceph, &format!("csi-vol-{clone}")).is_empty());
    // The same request again is the same volume (no inherited limits seen).
    c.controller
        .create_volume(from(
            &clone,
            Type::Volume(VolumeSource {
                volume_id: src.clone(),
            }),
            &[],
        ))
        .await
        .unwrap();
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: src.clone(),
            name: plugin.unique("qos-snap"),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let restore = plugin.unique("qos-restore");
    let r = c
        .controller
        .create_volume(from(
            &restore,
            Type::Snapshot(SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            }),
            &[("qosWriteIops", "77")],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        conf(&ceph, &format!("csi-vol-{restore}")),
        kv(&[("write_iops_limit", "77")])
    );
    // The source keeps its own.
    assert_eq!(
        conf(&ceph, &format!("csi-vol-{src_name}")),
        kv(&[("read_bps_limit", "1048576"), ("write_iops_limit", "10")])
    );
    for id in [v.volume_id, r.volume_id] {
        delete(&ceph, &mut c, &id).await;
    }
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
    delete(&ceph, &mut c, &src).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_qos_krbd_refuses_limits_and_errors_name_them() {
    let Some(ceph) = Ceph::from_env("rbd_qos_krbd_refuses_limits_and_errors_name_them") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller").await;
    let mut c = plugin.clients().await;
    let cap = ext4();
    // A krbd pool cannot enforce them: refused, saying why.
    let name = plugin.unique("qos-krbd");
    let mut req = create(&ceph, "ceph-krbd", &name, 64 * MIB, cap.clone());
    req.mutable_parameters = params(&[("qosWriteIops", "10")]);
    let m = expect_code(
        c.controller.create_volume(req).await,
        tonic::Code::InvalidArgument,
    );
    assert!(m.contains("qosWriteIops") && m.contains("krbd"), "{m}");
    assert!(ceph.images_in("ceph-krbd", &name).is_empty());
    let req = create(&ceph, "ceph-krbd", &name, 64 * MIB, cap.clone());
    let plain = c
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = expect_code(
        modify(&ceph, &mut c, &plain, &[("qosReadIops", "10")]).await,
        tonic::Code::InvalidArgument,
    );
    assert!(m.contains("krbd"), "{m}");
    delete(&ceph, &mut c, &plain).await;

    // Validation on an RBD volume, and NOT_FOUND.
    let name = plugin.unique("qos-err");
    let id = create_with(&ceph, &mut c, &name, cap.clone(), &[("qosWriteIops", "5")]).await;
    let m = expect_code(
        modify(&ceph, &mut c, &id, &[("qosWriteBps", "5 Mi")]).await,
        tonic::Code::InvalidArgument,
    );
    assert!(m.contains("qosWriteBps") && m.contains("\"5 Mi\""), "{m}");
    expect_code(
        modify(
            &ceph,
            &mut c,
            "ceph.no-such-volume",
            &[("qosWriteIops", "5")],
        )
        .await,
        tonic::Code::NotFound,
    );
    assert_eq!(
        conf(&ceph, &format!("csi-vol-{name}")),
        kv(&[("write_iops_limit", "5")])
    );
    let mut again = create(&ceph, "ceph", &name, 128 * MIB, cap.clone());
    again.mutable_parameters = params(&[("qosWriteIops", "6")]);
    expect_code(
        c.controller.create_volume(again).await,
        tonic::Code::AlreadyExists,
    );
    delete(&ceph, &mut c, &id).await;
}

/// csi-sanity's ModifyVolume specs on the RBD fs and block configurations
/// (StorageClass parameter `pool`, secrets for every call, as the suite's
/// `--csi.secrets` file gives them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_qos_sanity_modify_specs() {
    let Some(ceph) = Ceph::from_env("rbd_qos_sanity_modify_specs") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller").await;
    let mut c = plugin.clients().await;
    for (tag, cap) in [
        ("fs", mount_cap("", Mode::SingleNodeWriter)),
        ("block", block_cap(Mode::SingleNodeWriter)),
    ] {
        sanity_specs(
            &mut c,
            &plugin.unique(tag),
            cap,
            params(&[("pool", "ceph")]),
            ceph.secrets(),
        )
        .await;
    }
}

/// Benchmark (ignored; prints ratios, asserts nothing about them): fio's
/// measured rate against each limit on an RBD block volume (FUSE mounter).
///
///     cargo test -p haina --release --test rbd_qos -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rbd_qos_bench() {
    let Some(ceph) = Ceph::from_env("rbd_qos_bench") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = create_with(&ceph, &mut c, &plugin.unique("qos-bench"), cap.clone(), &[]).await;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &cap, "a")
        .await
        .unwrap();
    fio::BenchCase::print_header();
    for case in &fio::BENCH {
        modify(&ceph, &mut c, &id, &fio::NO_LIMITS).await.unwrap();
        settle().await;
        let free = fio::run(&[case.job(&m.target)])[0];
        modify(&ceph, &mut c, &id, &[(case.key, &case.limit_param())])
            .await
            .unwrap();
        settle().await;
        let r = fio::run(&[case.job(&m.target)])[0];
        case.print_row("rbd block", r, free);
    }
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
}

/// A read-only attachment (librbd opened read-only, without a watch) is
/// limited too; it gets a ControllerModifyVolume's limits at its next stage
/// (no header update reaches it live; docs/qos.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_qos_read_only_attachment_is_limited_and_restage_takes_new_limits() {
    let Some(ceph) =
        Ceph::from_env("rbd_qos_read_only_attachment_is_limited_and_restage_takes_new_limits")
    else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let cap = block_cap(Mode::SingleNodeReaderOnly);
    let id = create_with(
        &ceph,
        &mut c,
        &plugin.unique("qos-ro"),
        cap.clone(),
        &[("qosReadIops", "100")],
    )
    .await;
    let ctx = c
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: plugin.node_id.clone(),
            volume_capability: Some(cap.clone()),
            readonly: true,
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    let m = mount_on(&ceph, &plugin, &id, &cap, "ro", ctx.clone())
        .await
        .unwrap();
    let r = fio::run(&[Job::new("randread", "4k", &m.target)]);
    at_most("rbd read-only read IOPS, limit 100", r[0].iops, 100.0);
    modify(&ceph, &mut c, &id, &[("qosReadIops", "30")])
        .await
        .unwrap();
    assert!(
        plugin
            .logs()
            .contains("read-only attachments of this volume keep"),
        "no warning about the read-only attachment"
    );
    unmount_on(&plugin, &m).await;
    let m = mount_on(&ceph, &plugin, &id, &cap, "ro2", ctx)
        .await
        .unwrap();
    let r = fio::run(&[Job::new("randread", "4k", &m.target)]);
    at_most(
        "rbd read-only read IOPS after restage, limit 30",
        r[0].iops,
        30.0,
    );
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
}
