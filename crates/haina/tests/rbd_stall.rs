//! A stalled or dead FUSE data path costs one volume, never the node:
//!
//! - a FUSE server stopped with SIGSTOP (what a hung cluster looks like):
//!   Probe, another RBD volume and a local-pool volume keep working; the
//!   stopped volume's stats are abnormal at once; its unstage returns
//!   within the deadline and a retry force-unstages it (FUSE connection
//!   aborted, lazy unmounts, loop detached, server killed), with nothing
//!   leaked; staged again, the data written and fsync'ed before the stop is
//!   there;
//! - a FUSE server killed with `kill -9`: stats abnormal, a retried
//!   NodeStage is an error (not OK over a dead server), unstage + stage
//!   bring the volume back with its fsync'ed data;
//! - a node plugin in its own mount namespace: the FUSE server holds no
//!   mount of its own device (nor any FUSE mount), so killing the plugin
//!   (its namespace dies) never leaves the server hung in D state; the loop
//!   device goes with its last mount, and a new plugin cleans up and
//!   restages with the data;
//! - a loop device whose attach outlasted its deadline (the FUSE open was
//!   slow) is detached when it lands: the failed stage leaves nothing;
//! - in every case, no loop device is orphaned over a detached FUSE mount.
//!
//! Host deadlines are scaled down with HAINA_HOST_DEADLINE_MS; the time
//! bounds below only prove "did not hang".

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Clients, loops_under};
use haina_csi::v1 as csi;
use rbd::*;
use rustix::process::{Pid, Signal, kill_process};

const DEADLINE_MS: &str = "2000";
/// Generous "did not hang" bound for one call.
const BOUND: Duration = Duration::from_secs(15);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung for {:?}", start.elapsed()),
    }
}

fn signal(pid: i32, sig: Signal) {
    let _ = kill_process(Pid::from_raw(pid).unwrap(), sig);
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn write_synced(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

fn config_with_local(ceph: &Ceph) -> String {
    ceph.config() + "[pools.local]\nkind = \"local\"\n"
}

async fn create_in(ceph: &Ceph, c: &mut Clients, pool: &str, name: &str) -> String {
    c.controller
        .create_volume(create(ceph, pool, name, 64 * MIB, ext4()))
        .await
        .unwrap_or_else(|e| panic!("create {name} in {pool}: {e}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

async fn stats(node: &Plugin, id: &str, path: &Path) -> csi::VolumeCondition {
    let mut c = node.clients().await;
    c.node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("stats of {id}: {e}"))
        .into_inner()
        .volume_condition
        .unwrap()
}

async fn stage_req(ceph: &Ceph, node: &Plugin, m: &Mounted) -> Result<(), tonic::Status> {
    let mut c = node.clients().await;
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: m.id.clone(),
            staging_target_path: m.staging.to_str().unwrap().into(),
            volume_capability: Some(m.cap.clone()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn unpublish_node(node: &Plugin, m: &Mounted) {
    let mut c = node.clients().await;
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: m.id.clone(),
            target_path: m.target.to_str().unwrap().into(),
        })
        .await
        .unwrap();
}

/// NodeUnstage, retried (as a CO does) until it succeeds; each call must
/// return within the bound. Returns how many calls it took.
async fn unstage_until_ok(node: &Plugin, m: &Mounted) -> usize {
    for attempt in 1..=4 {
        let mut c = node.clients().await;
        let r = bounded(
            "NodeUnstageVolume",
            c.node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: m.id.clone(),
                staging_target_path: m.staging.to_str().unwrap().into(),
            }),
        )
        .await;
        match r {
            Ok(_) => return attempt,
            Err(e) => eprintln!("unstage attempt {attempt}: {e}"),
        }
    }
    panic!("NodeUnstageVolume never succeeded:\n{}", node.logs());
}

/// Loop devices over a FUSE image whose mount is gone: the kernel shows
/// their backing file as `/image`. No path names them any more, so nothing
/// could ever detach them: every one is a leak.
fn orphaned_fuse_loops() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let backing =
            std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        let backing = backing.trim().trim_end_matches(" (deleted)");
        if name.starts_with("loop") && backing == "/image" {
            out.push(name);
        }
    }
    out
}

/// Asserts no loop device was orphaned since `before` (see
/// [`orphaned_fuse_loops`]).
async fn assert_no_orphaned_loops(before: &[String]) {
    let start = Instant::now();
    loop {
        let new: Vec<String> = orphaned_fuse_loops()
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        if new.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < BOUND,
            "loop devices orphaned over a detached FUSE mount: {new:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until no loop device serves a file under `root`.
async fn no_loops_under(root: &Path) {
    let start = Instant::now();
    while !loops_under(root).is_empty() {
        assert!(
            start.elapsed() < BOUND,
            "loop devices left: {:?}",
            loops_under(root)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The full lifecycle of a fresh volume of `pool` with data, start to end.
async fn full_cycle(ceph: &Ceph, p: &Plugin, c: &mut Clients, pool: &str, tag: &str) {
    let name = p.unique(tag);
    let id = create_in(ceph, c, pool, &name).await;
    let m = publish_and_mount(ceph, c, p, &id, &ext4(), tag)
        .await
        .unwrap_or_else(|e| panic!("{pool}: {e}\n{}", p.logs()));
    write_synced(&m.target.join("x"), "still working");
    assert_eq!(
        std::fs::read_to_string(m.target.join("x")).unwrap(),
        "still working"
    );
    unmount_on(p, &m).await;
    unpublish(ceph, c, &id, &p.node_id).await;
    delete(ceph, c, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_stopped_fuse_server_costs_one_volume() {
    let Some(ceph) = Ceph::from_env("rbd_stopped_fuse_server_costs_one_volume") else {
        return;
    };
    let orphans_before = orphaned_fuse_loops();
    let p = Plugin::start_with_config(
        &ceph,
        "controller,node",
        &[("HAINA_HOST_DEADLINE_MS", DEADLINE_MS)],
        &config_with_local(&ceph),
    )
    .await;
    let mut c = p.clients().await;
    let id = create_in(&ceph, &mut c, "ceph", &p.unique("pvc-stop")).await;
    let m = publish_and_mount(&ceph, &mut c, &p, &id, &ext4(), "stop")
        .await
        .unwrap();
    write_synced(&m.target.join("before"), "written before the stop");
    let servers = p.fuse_servers();
    assert_eq!(servers.len(), 1);
    let stopped = servers[0];
    signal(stopped, Signal::STOP);

    // The node keeps working around it.
    let probe = bounded("Probe", c.identity.probe(csi::ProbeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    bounded(
        "another RBD volume",
        full_cycle(&ceph, &p, &mut c, "ceph", "other-rbd"),
    )
    .await;
    bounded(
        "a local-pool volume",
        full_cycle(&ceph, &p, &mut c, "local", "other-local"),
    )
    .await;

    // The stopped one is reported, quickly.
    let cond = bounded("stats of the stopped volume", stats(&p, &id, &m.target)).await;
    assert!(cond.abnormal, "stats say healthy: {}", cond.message);
    assert!(cond.message.contains("stopped"), "{}", cond.message);

    // Unstage: each call returns within the deadline; a retry forces it.
    bounded("NodeUnpublishVolume", unpublish_node(&p, &m)).await;
    let calls = unstage_until_ok(&p, &m).await;
    assert!(calls <= 2, "took {calls} calls");
    signal(stopped, Signal::CONT);
    let start = Instant::now();
    while proc_state(stopped).is_some_and(|s| s != 'Z') {
        assert!(start.elapsed() < BOUND, "the stopped server was not killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    no_loops_under(p.dir.path()).await;
    assert_no_orphaned_loops(&orphans_before).await;
    p.assert_no_leaks();
    assert!(
        p.logs().contains("aborted the FUSE connection"),
        "no FUSE abort logged"
    );

    // Staged again: the data fsync'ed before the stop is there.
    let m2 = mount_on(&ceph, &p, &id, &ext4(), "stop-again", HashMap::new())
        .await
        .unwrap_or_else(|e| panic!("restage: {e}\n{}", p.logs()));
    assert_eq!(
        std::fs::read_to_string(m2.target.join("before")).unwrap(),
        "written before the stop"
    );
    unmount_on(&p, &m2).await;
    unpublish(&ceph, &mut c, &id, &p.node_id).await;
    delete(&ceph, &mut c, &id).await;
    p.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_killed_fuse_server_is_reported_and_repaired() {
    let Some(ceph) = Ceph::from_env("rbd_killed_fuse_server_is_reported_and_repaired") else {
        return;
    };
    let orphans_before = orphaned_fuse_loops();
    let p = Plugin::start_full(
        &ceph,
        "controller,node",
        &[("HAINA_HOST_DEADLINE_MS", DEADLINE_MS)],
        PluginConfig::Secrets,
    )
    .await;
    let mut c = p.clients().await;
    let id = create_in(&ceph, &mut c, "ceph", &p.unique("pvc-kill")).await;
    let m = publish_and_mount(&ceph, &mut c, &p, &id, &ext4(), "kill")
        .await
        .unwrap();
    write_synced(&m.target.join("before"), "written before the kill");
    let servers = p.fuse_servers();
    assert_eq!(servers.len(), 1);
    signal(servers[0], Signal::KILL);
    let start = Instant::now();
    while !p.fuse_servers().is_empty() {
        assert!(start.elapsed() < BOUND);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let cond = bounded("stats", stats(&p, &id, &m.target)).await;
    assert!(cond.abnormal, "stats say healthy: {}", cond.message);
    assert!(cond.message.contains("not running"), "{}", cond.message);
    let r = bounded(
        "NodeStageVolume over a dead server",
        stage_req(&ceph, &p, &m),
    )
    .await;
    let e = r.expect_err("NodeStage answered OK over a dead FUSE server");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");

    bounded("NodeUnpublishVolume", unpublish_node(&p, &m)).await;
    unstage_until_ok(&p, &m).await;
    no_loops_under(p.dir.path()).await;
    assert_no_orphaned_loops(&orphans_before).await;
    p.assert_no_leaks();
    let m2 = mount_on(&ceph, &p, &id, &ext4(), "kill-again", HashMap::new())
        .await
        .unwrap_or_else(|e| panic!("restage: {e}\n{}", p.logs()));
    assert_eq!(
        std::fs::read_to_string(m2.target.join("before")).unwrap(),
        "written before the kill"
    );
    unmount_on(&p, &m2).await;
    unpublish(&ceph, &mut c, &id, &p.node_id).await;
    delete(&ceph, &mut c, &id).await;
    p.assert_no_leaks();
}

/// The mount-table lines of process `pid`'s namespace that would make it
/// hold its own device: FUSE mounts, or mounts of device `dev`.
fn held_by(pid: i32, dev: (u32, u32)) -> Vec<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let needle = format!(" {}:{} ", dev.0, dev.1);
    table
        .lines()
        .filter(|l| l.contains(" - fuse ") || l.contains(" - fuse.") || l.contains(&needle))
        .map(String::from)
        .collect()
}

fn dev_of(path: &str) -> (u32, u32) {
    let st = rustix::fs::stat(path).unwrap();
    (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
}

/// If a server did hang in D state (the bug), abort its FUSE connection so
/// the test leaves no stuck process behind.
fn abort_connections_of(pid: i32) {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    for l in table.lines().filter(|l| l.contains(" - fuse.haina-rbd ")) {
        if let Some(minor) = l.split(' ').nth(2).and_then(|d| d.split(':').nth(1)) {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_fuse_server_never_hangs_when_its_plugins_namespace_dies() {
    let Some(ceph) = Ceph::from_env("rbd_fuse_server_never_hangs_when_its_plugins_namespace_dies")
    else {
        return;
    };
    let orphans_before = orphaned_fuse_loops();
    let controller = Plugin::start(&ceph, "controller").await;
    let mut c = controller.clients().await;
    let mut node = Plugin::start_full(
        &ceph,
        "node",
        &[("HAINA_HOST_DEADLINE_MS", DEADLINE_MS)],
        PluginConfig::Secrets,
    )
    .await;
    // The node plugin in a mount namespace of its own, as in a container.
    node.kill9();
    node.wrap = vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
    ];
    node.spawn().await;
    let plugin_pid = node.pid().unwrap();

    let id = create_in(&ceph, &mut c, "ceph", &node.unique("pvc-ns")).await;
    let m = publish_and_mount(&ceph, &mut c, &node, &id, &ext4(), "ns")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
    // The mounts live in the plugin's namespace: reach them through it.
    let inside: PathBuf =
        PathBuf::from(format!("/proc/{plugin_pid}/root")).join(m.target.strip_prefix("/").unwrap());
    write_synced(&inside.join("before"), "written in the namespace");

    let servers = node.fuse_servers();
    assert_eq!(servers.len(), 1);
    let server = servers[0];
    let loops = loops_under(node.dir.path());
    assert_eq!(loops.len(), 1, "{loops:?}");
    let held = held_by(server, dev_of(&loops[0].0));
    if !held.is_empty() {
        abort_connections_of(server);
        panic!(
            "the FUSE server's mount namespace holds mounts stacked on its own device:\n{}",
            held.join("\n")
        );
    }

    // The plugin dies, and its namespace with it. That namespace held the
    // only mounts of the volume (a private namespace; a real node plugin
    // propagates its mounts to the host): the ext4 goes, the loop device
    // (set to detach on its last close) goes with it, and the server, whose
    // FUSE mount went too, exits — never stuck in D state.
    node.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let state = proc_state(server);
        assert!(
            matches!(state, None | Some('S' | 'R' | 'Z')),
            "server state {state:?} after its plugin's namespace died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And when it is stopped (a node shutting down), it exits.
    signal(server, Signal::TERM);
    let start = Instant::now();
    while proc_state(server).is_some_and(|s| s != 'Z') {
        if start.elapsed() > BOUND {
            let state = proc_state(server);
            abort_connections_of(server);
            panic!("the FUSE server did not exit (state {state:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new plugin in the host's namespace cleans up and restages.
    node.wrap.clear();
    node.spawn().await;
    unstage_until_ok(&node, &m).await;
    no_loops_under(node.dir.path()).await;
    assert_no_orphaned_loops(&orphans_before).await;
    node.assert_no_leaks();
    let m2 = mount_on(&ceph, &node, &id, &ext4(), "ns-again", HashMap::new())
        .await
        .unwrap_or_else(|e| panic!("restage: {e}\n{}", node.logs()));
    assert_eq!(
        std::fs::read_to_string(m2.target.join("before")).unwrap(),
        "written in the namespace"
    );
    unmount_on(&node, &m2).await;
    unpublish(&ceph, &mut c, &id, &node.node_id).await;
    delete(&ceph, &mut c, &id).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_a_loop_device_attached_after_its_deadline_is_detached() {
    let Some(ceph) = Ceph::from_env("rbd_a_loop_device_attached_after_its_deadline_is_detached")
    else {
        return;
    };
    let orphans_before = orphaned_fuse_loops();
    let controller = Plugin::start(&ceph, "controller").await;
    let mut c = controller.clients().await;
    // The server's open of the image (the loop attach) takes twice the
    // plugin's deadline for it.
    let slow_open = format!("sleep-{}", 2 * DEADLINE_MS.parse::<u64>().unwrap());
    let mut node = Plugin::start_full(
        &ceph,
        "node",
        &[
            ("HAINA_HOST_DEADLINE_MS", DEADLINE_MS),
            ("HAINA_FAILPOINTS", &format!("rbd-fuse-open={slow_open}")),
        ],
        PluginConfig::Secrets,
    )
    .await;
    let id = create_in(&ceph, &mut c, "ceph", &node.unique("pvc-late")).await;
    let r = bounded(
        "a stage whose attach stalls",
        publish_and_mount(&ceph, &mut c, &node, &id, &ext4(), "late"),
    )
    .await;
    assert!(r.is_err(), "the stage should have failed at its deadline");

    // The late device is detached when its open lands, and the failed
    // stage's FUSE mount and server go: nothing left, nothing orphaned.
    no_loops_under(node.dir.path()).await;
    assert_no_orphaned_loops(&orphans_before).await;
    let start = Instant::now();
    while !node.fuse_servers().is_empty() {
        assert!(
            start.elapsed() < BOUND,
            "the FUSE server outlived the failed stage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.assert_no_leaks();

    // Without the slow open, the retried stage converges.
    node.stop();
    node.env.clear();
    node.spawn().await;
    let m = publish_and_mount(&ceph, &mut c, &node, &id, &ext4(), "late")
        .await
        .unwrap_or_else(|e| panic!("retry: {e}\n{}", node.logs()));
    write_synced(&m.target.join("x"), "staged");
    unmount_on(&node, &m).await;
    unpublish(&ceph, &mut c, &id, &node.node_id).await;
    delete(&ceph, &mut c, &id).await;
    node.assert_no_leaks();
}
