//! The node registry of an RBD pool: node plugins with a keyring register
//! and heartbeat; ControllerPublish to a node ID nobody registered is
//! NOT_FOUND, to a stale node FAILED_PRECONDITION, to a live one OK;
//! `haina ctl nodes` lists the nodes, their volumes and which are stale; a
//! pool without a keyring keeps no registry and checks nothing, as
//! documented; a cluster that cannot be reached wedges neither start nor
//! stop.
//!
//! Every test works in an RBD namespace of its own, so its registry holds
//! exactly its own nodes.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::time::{Duration, Instant};

use common::*;
use haina_csi::v1 as csi;
use rbd::*;
use serde_json::Value;

/// Heartbeat every second, stale after three.
const FAST: &str = "node_heartbeat_seconds = 1\nnode_stale_seconds = 3\n";

fn publish_req(ceph: &Ceph, id: &str, node: &str) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(ext4()),
        secrets: ceph.secrets(),
        ..Default::default()
    }
}

/// Polls `f` until it gives a value; panics after `bound` (a generous
/// "did not happen at all" bound, not a timing assertion).
async fn eventually<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A keyring, and a pool `ceph` in a fresh namespace configured with it.
struct Setup {
    _dir: tempfile::TempDir,
    ns: String,
    config: String,
}

fn setup(ceph: &Ceph, keyring: bool, extra: &str) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("haina-registry-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let k = keyring.then(|| ceph.write_keyring(dir.path()));
    let ns = unique_name("reg");
    let config = ceph.pool_config("ceph", &ns, k.as_deref(), extra);
    Setup {
        _dir: dir,
        ns,
        config,
    }
}

async fn create_vol(ceph: &Ceph, c: &mut Clients, name: &str) -> String {
    c.controller
        .create_volume(create(ceph, "ceph", name, 32 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// `haina ctl nodes -o json` for pool `ceph`: its nodes by ID.
fn ctl_json(config: &std::path::Path) -> std::collections::BTreeMap<String, Value> {
    let out = ctl_nodes(config, &["--pool", "ceph", "-o", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctl nodes: {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["pools"][0]["pool"], "ceph", "{v}");
    v["pools"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap().to_string(), n.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_node_plugin_registers_and_heartbeats() {
    let Some(ceph) = Ceph::from_env("rbd_node_plugin_registers_and_heartbeats") else {
        return;
    };
    let s = setup(&ceph, true, FAST);
    let mut node = Plugin::start_with_config(&ceph, "node", &[], &s.config).await;
    // Registered by the time it serves.
    let reg = ceph.registry(&s.ns);
    let e = reg
        .get(&node.node_id)
        .unwrap_or_else(|| panic!("{} not registered: {reg:?}", node.node_id))
        .clone();
    assert_eq!(e["node_id"], node.node_id.as_str());
    assert!(
        e["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{e}"
    );
    assert!(e["client"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["pid"].as_u64(), node.pid().map(|p| p as u64), "{e}");
    assert_eq!(e["interval"], 1);
    assert!(e.get("stopped").is_none(), "{e}");
    let first = e["heartbeat"].as_u64().unwrap();
    assert!(e["started"].as_u64().unwrap() <= first, "{e}");
    // It heartbeats: the entry's heartbeat advances.
    eventually("the heartbeat advances", Duration::from_secs(20), || {
        let hb = ceph.registry(&s.ns)[&node.node_id]["heartbeat"].as_u64()?;
        (hb > first).then_some(())
    })
    .await;
    assert!(
        node.logs()
            .contains("registered in the pool's node registry")
    );
    // A graceful stop says so in the entry.
    node.stop();
    let e = &ceph.registry(&s.ns)[&node.node_id];
    assert!(e["stopped"].as_u64().is_some(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_publish_to_unknown_node_is_not_found() {
    let Some(ceph) = Ceph::from_env("rbd_publish_to_unknown_node_is_not_found") else {
        return;
    };
    // As the conformance suite runs it: one process, controller and node,
    // with user + keyring; and another node plugin.
    let s = setup(&ceph, true, "");
    let a = Plugin::start_with_config(&ceph, "controller,node", &[], &s.config).await;
    let b = Plugin::start_with_config(&ceph, "node", &[], &s.config).await;
    let mut c = a.clients().await;
    let id = create_vol(&ceph, &mut c, &a.unique("pvc-reg")).await;

    let msg = expect_code(
        c.controller
            .controller_publish_volume(publish_req(&ceph, &id, "no-such-node"))
            .await,
        tonic::Code::NotFound,
    );
    assert!(
        msg.contains("node_id \"no-such-node\"") && msg.contains("haina ctl nodes"),
        "{msg}"
    );
    // Without secrets (the pool's keyring reads the registry) the same.
    let mut no_secrets = publish_req(&ceph, &id, "no-such-node");
    no_secrets.secrets.clear();
    expect_code(
        c.controller.controller_publish_volume(no_secrets).await,
        tonic::Code::NotFound,
    );
    // Nothing was recorded, and unpublishing from an unknown node is OK.
    let vol = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        vol.status.unwrap().published_node_ids.is_empty(),
        "a refused publish was recorded"
    );
    unpublish(&ceph, &mut c, &id, "no-such-node").await;

    // Registered nodes: the other plugin, and this process's own node.
    for node in [&b.node_id, &a.node_id] {
        c.controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_capability: Some(rbd_block()),
                ..publish_req(&ceph, &id, node)
            })
            .await
            .unwrap_or_else(|e| panic!("publish to {node}: {e}"));
    }
    unpublish(&ceph, &mut c, &id, "").await;
    delete(&ceph, &mut c, &id).await;
}

/// A block capability both nodes may hold at once.
fn rbd_block() -> csi::VolumeCapability {
    block_cap(Mode::MultiNodeMultiWriter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_ctl_nodes_lists_nodes_volumes_and_stale() {
    let Some(ceph) = Ceph::from_env("rbd_ctl_nodes_lists_nodes_volumes_and_stale") else {
        return;
    };
    let s = setup(&ceph, true, FAST);
    let controller = Plugin::start_with_config(&ceph, "controller", &[], &s.config).await;
    let a = Plugin::start_with_config(&ceph, "node", &[], &s.config).await;
    let mut b = Plugin::start_with_config(&ceph, "node", &[], &s.config).await;
    let mut c = controller.clients().await;
    let id = create_vol(&ceph, &mut c, &controller.unique("pvc-ctl")).await;
    let on_b = publish_and_mount(&ceph, &mut c, &b, &id, &ext4(), "b")
        .await
        .unwrap();

    // Both node plugins, and no one else (the controller does not register).
    let nodes = ctl_json(&controller.config_path());
    let ids: Vec<&String> = nodes.keys().collect();
    let mut want = vec![&a.node_id, &b.node_id];
    want.sort();
    assert_eq!(ids, want, "{nodes:?}");
    for n in nodes.values() {
        assert_eq!(n["state"], "running", "{n}");
        assert_eq!(n["stale"], false, "{n}");
        assert!(n["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    assert_eq!(nodes[&a.node_id]["volumes"], serde_json::json!([]));
    let vols = nodes[&b.node_id]["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0]["volume_id"], id.as_str());
    assert_eq!(vols[0]["published"]["access_mode"], "SINGLE_NODE_WRITER");
    let att = &vols[0]["attachment"];
    assert_eq!(att["live"], true, "{att}");
    let fuse_addr = att["address"].as_str().unwrap().to_string();
    assert!(fuse_addr.starts_with("127.0.0.1:"), "{att}");
    // The table says the same.
    let out = ctl_nodes(&controller.config_path(), &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains(&b.node_id) && table.contains(&format!("at {fuse_addr} (live)")),
        "{table}"
    );

    // kill -9 of B's plugin: its heartbeats stop, it turns stale (its FUSE
    // server, a process of its own, still serves the volume).
    b.kill9();
    let stale = eventually("B shows stale", Duration::from_secs(30), || {
        let n = ctl_json(&controller.config_path()).remove(&b.node_id)?;
        (n["stale"] == true).then_some(n)
    })
    .await;
    assert_eq!(stale["state"], "stale");
    assert!(
        stale["heartbeat_age_seconds"].as_u64().unwrap() > 3,
        "{stale}"
    );
    assert_eq!(stale["volumes"][0]["attachment"]["live"], true, "{stale}");
    assert_eq!(
        ctl_json(&controller.config_path())[&a.node_id]["state"],
        "running"
    );
    // A new publication to the stale node is refused, naming its state;
    // the live one gets it.
    let other = create_vol(&ceph, &mut c, &controller.unique("pvc-ctl2")).await;
    let msg = expect_code(
        c.controller
            .controller_publish_volume(publish_req(&ceph, &other, &b.node_id))
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert!(
        msg.contains("heartbeat") && msg.contains(&b.node_id),
        "{msg}"
    );
    c.controller
        .controller_publish_volume(publish_req(&ceph, &other, &a.node_id))
        .await
        .unwrap();

    // B's plugin comes back: running again, and it lets go of its volume.
    b.spawn().await;
    eventually("B runs again", Duration::from_secs(30), || {
        let n = ctl_json(&controller.config_path()).remove(&b.node_id)?;
        (n["state"] == "running").then_some(())
    })
    .await;
    unmount_on(&b, &on_b).await;
    unpublish(&ceph, &mut c, &id, &b.node_id).await;
    unpublish(&ceph, &mut c, &other, &a.node_id).await;
    let nodes = ctl_json(&controller.config_path());
    assert_eq!(nodes[&b.node_id]["volumes"], serde_json::json!([]));
    delete(&ceph, &mut c, &id).await;
    delete(&ceph, &mut c, &other).await;
    b.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_registry_without_keyring() {
    let Some(ceph) = Ceph::from_env("rbd_registry_without_keyring") else {
        return;
    };
    // Keyring-less (credentials come with each request): the node plugin
    // cannot register, says so, and the controller does not check nodes.
    let s = setup(&ceph, false, FAST);
    let p = Plugin::start_with_config(&ceph, "controller,node", &[], &s.config).await;
    assert!(
        p.logs()
            .contains("does not register in the pool's node registry"),
        "{}",
        p.logs()
    );
    let mut c = p.clients().await;
    let id = create_vol(&ceph, &mut c, &p.unique("pvc-nokey")).await;
    assert!(
        ceph.registry(&s.ns).is_empty(),
        "a keyring-less node registered"
    );
    c.controller
        .controller_publish_volume(publish_req(&ceph, &id, "no-such-node"))
        .await
        .expect("without a registry, publish does not check node IDs");
    unpublish(&ceph, &mut c, &id, "no-such-node").await;
    // `ctl nodes` needs credentials: the keyring, else a secrets file.
    let out = ctl_nodes(&p.config_path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(
        stderr.starts_with("ERROR FAILED_PRECONDITION: ") && stderr.contains("keyring"),
        "{stderr}"
    );
    let creds = p.path("creds");
    std::fs::write(
        &creds,
        format!("userID={}\nuserKey={}\n", ceph.user, ceph.key),
    )
    .unwrap();
    let out = ctl_nodes(
        &p.config_path(),
        &["--secrets-file", creds.to_str().unwrap(), "-o", "json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains(&ceph.key), "the key was printed");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["pools"][0]["nodes"], serde_json::json!([]), "{v}");
    assert!(
        v["pools"][0]["registry"]
            .as_str()
            .unwrap()
            .starts_with("off"),
        "{v}"
    );
    let out = ctl_nodes(&p.config_path(), &["--pool", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // node_registry = "on": a keyring-less node plugin refuses to start...
    let on = ceph.pool_config("ceph", &s.ns, None, "node_registry = \"on\"\n");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(dir.path().join("config.toml"), &on).unwrap();
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_haina"))
        .arg("serve")
        .arg("--endpoint")
        .arg(format!("unix://{}/csi.sock", dir.path().display()))
        .args(["--node-id", "refused", "--services", "node", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node_registry = \"on\"") && stderr.contains("keyring"),
        "{stderr}"
    );
    // ... while a keyring-less controller checks with the request's secrets.
    let ctl = Plugin::start_with_config(&ceph, "controller", &[], &on).await;
    let mut cc = ctl.clients().await;
    expect_code(
        cc.controller
            .controller_publish_volume(publish_req(&ceph, &id, "no-such-node"))
            .await,
        tonic::Code::NotFound,
    );
    delete(&ceph, &mut c, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_registry_on_unreachable_cluster_does_not_wedge() {
    let Some(ceph) = Ceph::from_env("rbd_registry_on_unreachable_cluster_does_not_wedge") else {
        return;
    };
    // A "monitor" that accepts connections and never answers (a hung one).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_addr = hung.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().flatten() {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let keyring = ceph.write_keyring(dir.path());
    let config = format!(
        "[pools.hung]\nkind = \"rbd\"\nmonitors = [\"{hung_addr}\"]\nrados_pool = \"haina\"\n\
         user = \"{}\"\nkeyring = \"{}\"\n{FAST}",
        ceph.user,
        keyring.display()
    );
    let start = Instant::now();
    let mut p = Plugin::start_with_config(&ceph, "node", &[], &config).await;
    // Generous bounds: "did not hang", not timings.
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "start took {:?}",
        start.elapsed()
    );
    let mut c = p.clients().await;
    let start = Instant::now();
    let info = c
        .node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, p.node_id);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Several heartbeats fail meanwhile, loudly.
    eventually(
        "a failed heartbeat is logged",
        Duration::from_secs(20),
        || {
            p.logs()
                .contains("node registry heartbeat failed")
                .then_some(())
        },
    )
    .await;
    let start = Instant::now();
    p.stop();
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        start.elapsed()
    );
    // The stop mark failed, or was given up on: either way, said.
    let logs = p.logs();
    assert!(
        logs.contains("could not record the stop")
            || logs.contains("did not record the stop in time"),
        "{logs}"
    );
}

/// A plugin restarted with an overlap (the new one up before the old one
/// has stopped, as a DaemonSet surge does): the old one's stop leaves the
/// new one's entry alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_stopping_plugin_leaves_its_successors_entry() {
    let Some(ceph) = Ceph::from_env("rbd_stopping_plugin_leaves_its_successors_entry") else {
        return;
    };
    // Slow heartbeats: the successor does not rewrite its entry meanwhile.
    let s = setup(
        &ceph,
        true,
        "node_heartbeat_seconds = 30\nnode_stale_seconds = 90\n",
    );
    let mut old = Plugin::start_with_config(&ceph, "node", &[], &s.config).await;
    let mut new = Plugin::start_with_config(&ceph, "node", &[], &s.config).await;
    new.kill9();
    new.node_id = old.node_id.clone();
    new.spawn().await;
    let e = ceph.registry(&s.ns)[&old.node_id].clone();
    assert_eq!(e["pid"].as_u64(), new.pid().map(|p| p as u64), "{e}");
    old.stop();
    let e = &ceph.registry(&s.ns)[&old.node_id];
    assert!(
        e.get("stopped").is_none(),
        "the old plugin's stop hid the new one: {e}"
    );
    assert_eq!(e["pid"].as_u64(), new.pid().map(|p| p as u64), "{e}");
    assert!(
        old.logs()
            .contains("another plugin has registered this node")
    );
    new.stop();
    assert!(
        ceph.registry(&s.ns)[&new.node_id]["stopped"]
            .as_u64()
            .is_some()
    );
}
