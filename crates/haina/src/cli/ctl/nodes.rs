//! `haina ctl nodes`: the nodes of RBD pools, read from Ceph rather than
//! from a CSI endpoint (the node registry is not part of CSI): each node's
//! state (running, stale, stopped, or unregistered but holding volumes),
//! its client address, start time and heartbeat age, and the volumes
//! published to or attached on it with their data-path client addresses
//! (what fencing blocklists; docs/rbd.md).
//!
//! It reads with the pool's `user` + `keyring` from the config, or with
//! `--secrets-file` (`userID`/`userKey`) for a keyring-less pool, and
//! changes nothing (but creates the pool's RBD namespace if it does not
//! exist yet, as every haina connection does). Staleness is judged with this machine's clock and the
//! config's `node_stale_seconds`. Errors follow ctl's exit codes: a bad
//! config or pool name is INVALID_ARGUMENT, missing credentials
//! FAILED_PRECONDITION, an unreachable cluster UNAVAILABLE.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;

use super::render::{View, rfc3339};
use super::{Failure, Secrets, read_secrets};
use crate::backend::rbd::nodes::{self, NodeReport, NodeState, NodeVolume, PoolNodes};
use crate::config::{Config, PoolConfig};
use crate::ids::PoolName;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pool config (TOML) the plugins run with.
    #[arg(long, env = "HAINA_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Only this pool (default: every RBD pool in the config).
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    secrets: Secrets,
}

/// Surveys the selected pools (blocking work off the runtime, under the
/// ctl's `--timeout`).
pub async fn run(a: Args, timeout: Duration) -> Result<(Value, View), Failure> {
    let bad = |m: String| Failure::new(Code::InvalidArgument, m);
    let config = Config::load(Some(&a.config)).map_err(|e| bad(e.to_string()))?;
    let wanted = a
        .pool
        .as_deref()
        .map(PoolName::parse)
        .transpose()
        .map_err(|e| bad(format!("--pool: {e}")))?;
    let mut pools = Vec::new();
    for (name, pc) in &config.pools {
        if wanted.as_ref().is_some_and(|w| w != name) {
            continue;
        }
        match pc {
            PoolConfig::Rbd(r) => pools.push((name.clone(), r.clone())),
            PoolConfig::Local(_) if wanted.is_some() => {
                return Err(bad(format!(
                    "pool {name} is a local pool: it has one node, the one it lives on, and no \
                     node registry"
                )));
            }
            PoolConfig::Local(_) => {}
        }
    }
    if let Some(w) = &wanted
        && pools.is_empty()
    {
        return Err(bad(format!(
            "--pool {w}: no such pool in {}",
            a.config.display()
        )));
    }
    if pools.is_empty() {
        return Err(bad(format!("{} has no RBD pool", a.config.display())));
    }
    let secrets = crate::volume::Secrets(read_secrets(&a.secrets)?.into_iter().collect());
    let work = tokio::task::spawn_blocking(move || {
        pools
            .iter()
            .map(|(name, cfg)| nodes::survey(name, cfg, &secrets))
            .collect::<crate::error::Result<Vec<_>>>()
    });
    let surveyed = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => r.map_err(|e| Failure::new(e.code(), e.to_string()))?,
        Ok(Err(e)) => return Err(Failure::new(Code::Internal, e.to_string())),
        Err(_) => {
            return Err(Failure::new(
                Code::DeadlineExceeded,
                format!("no answer from Ceph within {}s", timeout.as_secs()),
            ));
        }
    };
    let now = crate::volume::now_unix().0.max(0) as u64;
    Ok((to_json(&surveyed, now), View::Nodes))
}

/// The survey as JSON (what `-o json` prints and the table is made from).
pub fn to_json(pools: &[PoolNodes], now: u64) -> Value {
    json!({ "pools": pools.iter().map(|p| pool(p, now)).collect::<Vec<_>>() })
}

fn pool(p: &PoolNodes, now: u64) -> Value {
    json!({
        "pool": p.pool.as_str(),
        "home": p.home,
        "registry": p.settings.describe(),
        "stale_after_seconds": p.settings.stale_after.as_secs(),
        "nodes": p.nodes.iter().map(|n| node(n, now)).collect::<Vec<_>>(),
    })
}

fn time(t: u64) -> Value {
    json!(rfc3339(t as i64, 0))
}

fn node(n: &NodeReport, now: u64) -> Value {
    let mut v = json!({
        "node_id": n.node_id,
        "state": n.state.as_str(),
        "stale": n.state == NodeState::Stale,
        "volumes": n.volumes.iter().map(volume).collect::<Vec<_>>(),
    });
    if let Some(e) = &n.entry {
        let o = v.as_object_mut().expect("an object");
        o.insert("address".into(), json!(e.address));
        o.insert("client".into(), json!(e.client));
        o.insert("hostname".into(), json!(e.hostname));
        o.insert("pid".into(), json!(e.pid));
        o.insert("version".into(), json!(e.version));
        o.insert("started".into(), time(e.started));
        o.insert("heartbeat".into(), time(e.heartbeat));
        o.insert("heartbeat_age_seconds".into(), json!(e.age(now)));
        o.insert("heartbeat_interval_seconds".into(), json!(e.interval));
        if let Some(s) = e.stopped {
            o.insert("stopped".into(), time(s));
        }
    }
    v
}

fn volume(v: &NodeVolume) -> Value {
    json!({
        "volume_id": v.volume_id,
        "image": v.image,
        "published": v.publication.as_ref().map(|p| json!({
            "access_mode": p.mode.name(),
            "readonly": p.readonly,
            "block": p.block,
        })),
        "attachment": v.attachment.as_ref().map(|(r, live)| json!({
            "client": r.client,
            "address": r.addr,
            "mode": r.mode,
            "since": time(r.since),
            "live": live,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::rbd::meta::AttachRecord;
    use crate::backend::rbd::nodes::{NodeEntry, Settings};
    use crate::volume::{AccessMode, Publication};

    #[test]
    fn json_and_table_say_the_same() {
        let settings = Settings {
            mode: crate::config::NodeRegistry::Auto,
            has_keyring: true,
            heartbeat: Duration::from_secs(10),
            stale_after: Duration::from_secs(60),
        };
        let entry = |hb| NodeEntry {
            node_id: "a".into(),
            address: "10.0.0.5:0/377".into(),
            client: 4142,
            hostname: "host-a".into(),
            pid: 7,
            version: "0.1.0".into(),
            started: 1_700_000_000,
            heartbeat: hb,
            interval: 10,
            stopped: None,
        };
        let vol = NodeVolume {
            volume_id: "ceph.pvc-1".into(),
            image: "csi-vol-pvc-1".into(),
            publication: Some(Publication {
                readonly: false,
                mode: AccessMode::SingleNodeWriter,
                block: false,
            }),
            attachment: Some((
                AttachRecord {
                    client: 4150,
                    addr: "10.0.0.5:0/999".into(),
                    mode: "exclusive".into(),
                    since: 1_700_000_100,
                },
                true,
            )),
        };
        let p = PoolNodes {
            pool: PoolName::parse("ceph").unwrap(),
            home: "kube/ceph".into(),
            settings,
            nodes: vec![
                NodeReport {
                    node_id: "a".into(),
                    entry: Some(entry(1_700_000_990)),
                    state: NodeState::Running,
                    volumes: vec![],
                },
                NodeReport {
                    node_id: "b".into(),
                    entry: Some(NodeEntry {
                        node_id: "b".into(),
                        ..entry(1_700_000_100)
                    }),
                    state: NodeState::Stale,
                    volumes: vec![vol],
                },
            ],
        };
        let v = to_json(&[p], 1_700_001_000);
        let b = &v["pools"][0]["nodes"][1];
        assert_eq!(b["state"], "stale");
        assert_eq!(b["stale"], true);
        assert_eq!(b["heartbeat_age_seconds"], 900);
        assert_eq!(
            b["volumes"][0]["published"]["access_mode"],
            "SINGLE_NODE_WRITER"
        );
        assert_eq!(b["volumes"][0]["attachment"]["address"], "10.0.0.5:0/999");
        assert_eq!(v["pools"][0]["nodes"][0]["stale"], false);
        let text = super::super::render::render(&v, &View::Nodes);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("POOL"), "{text}");
        assert!(
            lines[1].contains("running") && lines[1].contains("10s ago"),
            "{text}"
        );
        assert!(
            lines[2].contains("stale") && lines[2].contains("900s ago"),
            "{text}"
        );
        assert!(
            text.contains("client.4150 at 10.0.0.5:0/999 (live)"),
            "{text}"
        );
    }
}
