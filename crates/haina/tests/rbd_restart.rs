//! The node plugin is killed (`kill -9`) while a writer is writing through
//! a mounted RBD volume, and restarted: the writer sees no I/O error, every
//! file it wrote and fsync'ed is intact, and the restarted plugin re-adopts
//! the attachment (loop device + live FUSE mount) to finish the lifecycle
//! with nothing leaked. The controller runs in a process of its own, as in
//! a real deployment.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::process::{Command, Stdio};
use std::time::Duration;

use rbd::*;

const FILE_BYTES: usize = 256 * 1024;

fn expected(i: u32) -> Vec<u8> {
    format!("line {i}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(FILE_BYTES)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_node_plugin_restart_keeps_io_flowing() {
    let Some(ceph) = Ceph::from_env("rbd_node_plugin_restart_keeps_io_flowing") else {
        return;
    };
    let controller = Plugin::start(&ceph, "controller").await;
    let mut node = Plugin::start(&ceph, "node").await;
    let mut c = controller.clients().await;
    let name = node.unique("pvc-restart");
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 128 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = publish_and_mount(&ceph, &mut c, &node, &id, &ext4(), "w")
        .await
        .unwrap();
    let servers = node.fuse_servers();
    assert_eq!(servers.len(), 1);

    // The writer: numbered files, each fsync'ed (dd conv=fsync) before it
    // is logged (outside the volume) as done; any error ends it non-zero.
    let done_log = node.path("writer.done");
    let stop = node.path("writer.stop");
    let script = format!(
        "i=0; while [ ! -e {stop} ]; do \
           yes \"line $i\" | head -c {FILE_BYTES} | dd of={dir}/f$i bs=64k conv=fsync status=none || exit 1; \
           echo $i >> {log}; i=$((i+1)); \
         done",
        stop = stop.display(),
        dir = m.target.display(),
        log = done_log.display(),
    );
    let mut writer = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let count = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while count(&done_log) < 5 {
        assert!(writer.try_wait().unwrap().is_none(), "writer died early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // kill -9 the node plugin mid-write; the FUSE server is not its child
    // in any way that matters and keeps serving.
    node.kill9();
    let at_kill = count(&done_log);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        count(&done_log) > at_kill,
        "I/O stalled while the plugin was down"
    );
    assert_eq!(node.fuse_servers(), servers, "the FUSE server must survive");
    node.spawn().await;
    let at_restart = count(&done_log);
    while count(&done_log) < at_restart + 5 {
        assert!(
            writer.try_wait().unwrap().is_none(),
            "writer died after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&stop, "").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the writer saw an I/O error: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every fsync'ed file is intact.
    let done = std::fs::read_to_string(&done_log).unwrap();
    let n = done.lines().count();
    assert!(n >= 10, "only {n} files written");
    for i in done.lines().map(|l| l.parse::<u32>().unwrap()) {
        let got = std::fs::read(m.target.join(format!("f{i}"))).unwrap();
        assert!(got == expected(i), "file f{i} is corrupt");
    }

    // The restarted plugin has no Ceph connection (stats carry no secrets),
    // yet reports the volume healthy from the kernel's view.
    let mut nc = node.clients().await;
    let stats = nc
        .node
        .node_get_volume_stats(haina_csi::v1::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: m.target.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    assert!(stats.usage[0].total > 0);

    // The restarted plugin re-adopts the attachment and tears it down.
    unmount_on(&node, &m).await;
    assert!(
        node.fuse_servers().is_empty(),
        "FUSE server left after unstage"
    );
    unpublish(&ceph, &mut c, &id, &node.node_id).await;
    delete(&ceph, &mut c, &id).await;
    assert!(ceph.images_with(&name).is_empty());
    node.assert_no_leaks();
    controller.assert_no_leaks();
}
