//! The node registry of an RBD pool: which node plugins serve the pool,
//! where they are, and whether they are alive. It lets ControllerPublish
//! refuse a node ID no plugin has (NOT_FOUND, as the CSI spec wants) or one
//! that stopped heartbeating, and gives fencing its facts (`haina ctl
//! nodes`): each node's client address, its heartbeat's age, and the
//! volumes published to and attached on it.
//!
//! Where: one RADOS object, [`OBJECT`], in the pool's own RBD namespace, so
//! each haina pool has its own registry and every controller instance reads
//! the same one. Its omap holds one key per node ID whose value is a
//! [`NodeEntry`] (JSON). A node only ever writes its own key, and an omap
//! write replaces a key whole, so nodes never race each other.
//!
//! Who writes: a node plugin (`serve` with the node service), with the
//! pool's configured `user` + `keyring` (node plugins get no secrets before
//! NodeStage). [`Heartbeat`] registers at start, then rewrites the entry
//! every `node_heartbeat_seconds` on a thread of its own: it holds no lock
//! an RPC takes, every Ceph call on it is bounded (the connection's connect
//! and op timeouts), and stopping it waits a bounded time, so a hung
//! cluster never wedges the plugin or its shutdown. A graceful stop records
//! `stopped`; a `kill -9` just stops the heartbeats, and the entry turns
//! stale after `node_stale_seconds`.
//!
//! When: [`Settings`] decides, from the pool's `node_registry` (`auto`: on
//! when the pool has a keyring). Without one a node plugin cannot register,
//! so a controller with the same config cannot tell an unknown node from a
//! keyring-less one, and publishes without checking (as before the
//! registry); both are logged at start.
//!
//! Time: heartbeats are the writer's wall clock, judged by the reader's, so
//! nodes and controllers need synchronised clocks (Ceph itself does). A
//! reader never calls an entry stale before three of the node's own
//! heartbeat intervals, whatever its own threshold says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use haina_rbd::IoCtx;
use serde::{Deserialize, Serialize};

use super::conn::{Conn, Connections, ceph_err};
use super::meta::{self, AttachRecord, Kind, Meta};
use crate::config::{NodeRegistry, RbdConfig};
use crate::error::{Error, Result};
use crate::ids::PoolName;
use crate::volume::{Publication, Secrets};

/// The RADOS object holding the registry, in the pool's namespace.
pub const OBJECT: &str = "haina.nodes";
/// A reader never calls an entry stale before this many of the node's own
/// heartbeat intervals.
const MIN_INTERVALS: u64 = 3;

/// A node plugin's registry entry (the JSON value under its node ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node_id: String,
    /// The plugin's librados client address (`ceph osd blocklist add` takes
    /// it). Its FUSE servers have clients of their own, recorded in each
    /// image's `haina.attach.<node>`.
    pub address: String,
    /// The plugin's client id (`client.<id>`).
    pub client: u64,
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    /// When the plugin started (seconds since the epoch, its clock).
    pub started: u64,
    /// When it last wrote this entry.
    pub heartbeat: u64,
    /// Its heartbeat interval, in seconds.
    pub interval: u64,
    /// Set by a graceful stop: when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<u64>,
}

/// What a registry entry says about its node, at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating.
    Running,
    /// No heartbeat for longer than the threshold: dead, hung, partitioned
    /// from Ceph, or killed.
    Stale,
    /// Stopped gracefully and not started again.
    Stopped,
    /// Not in the registry (seen only in publications or attach records).
    Unregistered,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stale => "stale",
            Self::Stopped => "stopped",
            Self::Unregistered => "unregistered",
        }
    }
}

impl NodeEntry {
    /// Seconds since the last heartbeat (0 for one from the future: a
    /// clock ahead of ours).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.heartbeat)
    }

    /// The threshold that applies to this entry: ours, but never less than
    /// [`MIN_INTERVALS`] of the node's own interval.
    pub fn stale_after(&self, ours: u64) -> u64 {
        ours.max(MIN_INTERVALS.saturating_mul(self.interval))
    }

    pub fn state(&self, now: u64, stale_after: u64) -> NodeState {
        if self.stopped.is_some() {
            NodeState::Stopped
        } else if self.age(now) > self.stale_after(stale_after) {
            NodeState::Stale
        } else {
            NodeState::Running
        }
    }
}

/// A pool's registry settings, from its config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: NodeRegistry,
    /// Whether the pool configures `user` + `keyring`.
    pub has_keyring: bool,
    pub heartbeat: Duration,
    pub stale_after: Duration,
}

impl Settings {
    pub fn from_config(name: &PoolName, cfg: &RbdConfig) -> Result<Self> {
        let bad = |m: String| Error::InvalidArgument(format!("pool {name}: {m}"));
        if cfg.node_heartbeat_seconds == 0 {
            return Err(bad("node_heartbeat_seconds must be at least 1".into()));
        }
        if cfg.node_stale_seconds < 2 * cfg.node_heartbeat_seconds {
            return Err(bad(format!(
                "node_stale_seconds ({}) must be at least twice node_heartbeat_seconds ({}), \
                 or a single late heartbeat makes a node stale",
                cfg.node_stale_seconds, cfg.node_heartbeat_seconds
            )));
        }
        Ok(Self {
            mode: cfg.node_registry,
            has_keyring: cfg.keyring.is_some(),
            heartbeat: Duration::from_secs(cfg.node_heartbeat_seconds),
            stale_after: Duration::from_secs(cfg.node_stale_seconds),
        })
    }

    /// Whether ControllerPublish checks node IDs against the registry.
    pub fn enforced(&self) -> bool {
        match self.mode {
            NodeRegistry::On => true,
            NodeRegistry::Off => false,
            NodeRegistry::Auto => self.has_keyring,
        }
    }

    /// Whether a node plugin registers: `Ok(false)` when the registry is
    /// off (or `auto` without a keyring), an error when it is `on` but the
    /// plugin has no credentials to register with.
    pub fn registers(&self, pool: &PoolName) -> Result<bool> {
        match (self.mode, self.has_keyring) {
            (NodeRegistry::Off, _) | (NodeRegistry::Auto, false) => Ok(false),
            (_, true) => Ok(true),
            (NodeRegistry::On, false) => Err(Error::InvalidArgument(format!(
                "pool {pool}: node_registry = \"on\" needs `user` + `keyring` on the pool for the \
                 node plugin to register with (or node_registry = \"auto\" to run without it)"
            ))),
        }
    }

    /// One line for logs and `describe`.
    pub fn describe(&self) -> String {
        match (self.enforced(), self.mode) {
            (true, _) => format!(
                "on (heartbeat every {}s, stale after {}s)",
                self.heartbeat.as_secs(),
                self.stale_after.as_secs()
            ),
            (false, NodeRegistry::Off) => "off (node_registry = \"off\")".into(),
            (false, _) => "off (the pool configures no user + keyring)".into(),
        }
    }
}

fn now() -> u64 {
    crate::volume::now_unix().0.max(0) as u64
}

/// The entry of `node`, if registered.
pub fn lookup(io: &IoCtx, node: &str) -> haina_rbd::Result<Option<NodeEntry>> {
    match io.omap_get(OBJECT, &[node]) {
        Ok(mut found) => Ok(found.remove(node).and_then(|v| parse(node, &v))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every registered node, by node ID.
pub fn list(io: &IoCtx) -> haina_rbd::Result<BTreeMap<String, NodeEntry>> {
    match io.omap_list(OBJECT) {
        Ok(all) => Ok(all
            .into_iter()
            .filter_map(|(k, v)| parse(&k, &v).map(|e| (k, e)))
            .collect()),
        Err(e) if e.is_not_found() => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// An entry's JSON; one that cannot be read (another version's, or
/// damaged) counts as absent, with a warning.
fn parse(node: &str, v: &[u8]) -> Option<NodeEntry> {
    match serde_json::from_slice(v) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(node, error = %e, "unreadable node registry entry; ignoring it");
            None
        }
    }
}

/// ControllerPublish's decision about the node it publishes to: NOT_FOUND
/// when no plugin registered that node ID, FAILED_PRECONDITION when its
/// plugin stopped or its heartbeat is stale (a publication to a dead node
/// would hold a single-node volume there until someone unpublishes it;
/// the CO retries, and the call succeeds once the plugin heartbeats again).
pub fn check_publish(
    pool: &PoolName,
    home: &str,
    node: &str,
    entry: Option<&NodeEntry>,
    now: u64,
    stale_after: u64,
) -> Result<()> {
    let Some(e) = entry else {
        return Err(Error::NotFound(format!(
            "node_id {node:?} is not a node of pool {pool}: no node plugin registered under that ID \
             in the pool's node registry (RADOS object {OBJECT} in {home}). A node plugin registers \
             when it starts with `user` + `keyring` configured on the pool; check the node's ID \
             (NodeGetInfo) and its plugin's log, and list the registry with `haina ctl nodes`"
        )));
    };
    match e.state(now, stale_after) {
        NodeState::Running | NodeState::Unregistered => Ok(()),
        NodeState::Stopped => Err(Error::FailedPrecondition(format!(
            "node_id {node:?}: its node plugin for pool {pool} stopped {}s ago and has not \
             started again; the volume is published once it runs",
            now.saturating_sub(e.stopped.unwrap_or(e.heartbeat))
        ))),
        NodeState::Stale => Err(Error::FailedPrecondition(format!(
            "node_id {node:?}: the node plugin for pool {pool} last heartbeat {}s ago (stale \
             after {}s; client.{} at {}): the node or its plugin may be down or cut off from \
             Ceph; the volume is published once it heartbeats again. If the node is dead, fence \
             it (docs/rbd.md, Fencing; `haina ctl nodes` lists its addresses)",
            e.age(now),
            e.stale_after(stale_after),
            e.client,
            e.address
        ))),
    }
}

/// What keeps a node plugin in the registry.
struct Beat {
    pool: PoolName,
    home: String,
    conns: Arc<Connections>,
    node_id: String,
    hostname: String,
    started: u64,
    interval: Duration,
}

impl Beat {
    /// Writes this node's entry once, with the connection the configured
    /// keyring opens (`stopped`: mark a graceful stop).
    fn write(&self, stopped: Option<u64>) -> Result<NodeEntry> {
        let c = self.conns.get(&Secrets::default())?;
        self.write_with(&c, stopped)
    }

    fn write_with(&self, c: &Conn, stopped: Option<u64>) -> Result<NodeEntry> {
        let what = || format!("writing the node registry ({OBJECT} in {})", self.home);
        let fail = |e: haina_rbd::Error| {
            self.conns.check(c, &e);
            ceph_err(what(), e)
        };
        let address = c.cluster.addrs().map_err(fail)?;
        let entry = NodeEntry {
            node_id: self.node_id.clone(),
            address,
            client: c.instance_id(),
            hostname: self.hostname.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started,
            heartbeat: now(),
            interval: self.interval.as_secs(),
            stopped,
        };
        let json =
            serde_json::to_vec(&entry).map_err(|e| Error::internal("encoding a node entry", e))?;
        c.io.omap_set(OBJECT, &[(self.node_id.as_str(), &json)])
            .map_err(fail)?;
        Ok(entry)
    }

    fn run(self, signal: Arc<Signal>, first: SyncSender<()>, done: SyncSender<()>) {
        let mut first = Some(first);
        let mut failures = 0u32;
        let mut registered = false;
        loop {
            match self.write(None) {
                Ok(e) => {
                    if !registered || failures > 0 {
                        tracing::info!(pool = %self.pool, node = %self.node_id, address = %e.address,
                            client = e.client, registry = %format!("{OBJECT} in {}", self.home),
                            "registered in the pool's node registry; heartbeating");
                    }
                    registered = true;
                    failures = 0;
                }
                Err(err) => {
                    failures += 1;
                    // Loud at first, then about once a minute.
                    let every = (60 / self.interval.as_secs().max(1)).max(1) as u32;
                    if failures == 1 || failures.is_multiple_of(every) {
                        tracing::warn!(pool = %self.pool, node = %self.node_id, failures,
                            error = %err, "node registry heartbeat failed; ControllerPublish to \
                            this node is refused once its entry is stale or if it never registered");
                    }
                }
            }
            if let Some(f) = first.take() {
                let _ = f.send(());
            }
            if signal.wait(self.interval) {
                break;
            }
        }
        let stopped = self
            .conns
            .get(&Secrets::default())
            .and_then(|c| match self.successor(&c) {
                Some(other) => Ok(Some(other)),
                None => self.write_with(&c, Some(now())).map(|_| None),
            });
        match stopped {
            Ok(Some(other)) => tracing::info!(pool = %self.pool, node = %self.node_id,
                successor_pid = other.pid, successor_host = %other.hostname,
                "another plugin has registered this node since; leaving its entry alone"),
            Ok(None) => tracing::info!(pool = %self.pool, node = %self.node_id,
                "recorded this node plugin as stopped in the node registry"),
            Err(e) => tracing::warn!(pool = %self.pool, node = %self.node_id, error = %e,
                "could not record the stop in the node registry; the node shows stale"),
        }
        let _ = done.send(());
    }

    /// The entry of another process that registered this node ID after us
    /// (a new plugin that started before this one finished stopping),
    /// which a stop mark must not overwrite.
    fn successor(&self, c: &Conn) -> Option<NodeEntry> {
        let e = lookup(&c.io, &self.node_id).ok()??;
        let ours =
            e.pid == std::process::id() && e.hostname == self.hostname && e.started == self.started;
        (!ours && e.started >= self.started).then_some(e)
    }
}

/// The stop flag of a heartbeat thread.
#[derive(Default)]
struct Signal {
    stop: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Waits `d`, or until stopped; true when stopped.
    fn wait(&self, d: Duration) -> bool {
        let g = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }

    fn raise(&self) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }
}

/// A node plugin's registration in one pool: registers at start and
/// heartbeats until [`stop`](crate::backend::Presence::stop)ped.
pub struct Heartbeat {
    pool: PoolName,
    signal: Arc<Signal>,
    first: Receiver<()>,
    done: Receiver<()>,
}

impl Heartbeat {
    /// Starts the heartbeat thread; the first registration runs at once.
    /// `announced` is set for as long as the thread runs.
    pub fn start(
        pool: PoolName,
        home: String,
        conns: Arc<Connections>,
        node_id: String,
        interval: Duration,
        announced: Arc<AtomicBool>,
    ) -> Result<Self> {
        let signal = Arc::new(Signal::default());
        let (first_tx, first) = sync_channel(1);
        let (done_tx, done) = sync_channel(1);
        let beat = Beat {
            pool: pool.clone(),
            home,
            conns,
            node_id,
            hostname: crate::driver::hostname(),
            started: now(),
            interval,
        };
        let s = signal.clone();
        let flag = announced.clone();
        announced.store(true, Ordering::SeqCst);
        std::thread::Builder::new()
            .name(format!("heartbeat-{pool}"))
            .spawn(move || {
                beat.run(s, first_tx, done_tx);
                flag.store(false, Ordering::SeqCst);
            })
            .map_err(|e| {
                announced.store(false, Ordering::SeqCst);
                Error::internal(format!("starting the heartbeat of pool {pool}"), e)
            })?;
        Ok(Self {
            pool,
            signal,
            first,
            done,
        })
    }
}

impl crate::backend::Presence for Heartbeat {
    fn wait_registered(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let done = self.first.recv_timeout(left).is_ok();
        if !done {
            tracing::warn!(pool = %self.pool,
                "the first node registry write has not finished; serving anyway, it continues \
                 in the background");
        }
        done
    }

    fn stop(self: Box<Self>, within: Duration) {
        self.signal.raise();
        if self.done.recv_timeout(within).is_err() {
            tracing::warn!(pool = %self.pool, ?within,
                "the node registry did not record the stop in time; the node shows stale later");
        }
    }
}

/// A volume of the pool as one node holds it.
#[derive(Debug, Clone)]
pub struct NodeVolume {
    pub volume_id: String,
    pub image: String,
    pub publication: Option<Publication>,
    /// The node's attach record, and whether its client still watches the
    /// image (a live data path that fencing must cut).
    pub attachment: Option<(AttachRecord, bool)>,
}

/// One node as the registry and the images know it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub node_id: String,
    pub entry: Option<NodeEntry>,
    pub state: NodeState,
    pub volumes: Vec<NodeVolume>,
}

/// Everything a pool knows about its nodes.
#[derive(Debug, Clone)]
pub struct PoolNodes {
    pub pool: PoolName,
    pub home: String,
    pub settings: Settings,
    pub nodes: Vec<NodeReport>,
}

/// Reads a pool's registry and, from every volume image, the publications
/// and attach records, with `secrets` (or the pool's keyring). Nodes that
/// hold volumes without being registered are listed as
/// [`NodeState::Unregistered`]. For `haina ctl nodes`.
pub fn survey(name: &PoolName, cfg: &RbdConfig, secrets: &Secrets) -> Result<PoolNodes> {
    let settings = Settings::from_config(name, cfg)?;
    let conns = Connections::for_pool(name, cfg);
    let home = conns.addr().home();
    let c = conns.get(secrets)?;
    let registry = list(&c.io).map_err(|e| ceph_err(format!("reading {OBJECT} in {home}"), e))?;
    let now = now();
    let stale = settings.stale_after.as_secs();
    let mut nodes: BTreeMap<String, NodeReport> = registry
        .into_iter()
        .map(|(id, e)| {
            let state = e.state(now, stale);
            let report = NodeReport {
                node_id: id.clone(),
                entry: Some(e),
                state,
                volumes: Vec::new(),
            };
            (id, report)
        })
        .collect();
    let images =
        c.io.list_images()
            .map_err(|e| ceph_err(format!("listing the images of {home}"), e))?;
    for image in images {
        let Some((Kind::Volume, object, _)) = meta::parse_image_name(&image) else {
            continue;
        };
        let img = match c.io.open_read_only(&image) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(ceph_err(format!("opening {home}/{image}"), e)),
        };
        let m = Meta::from_list(
            img.metadata_list()
                .map_err(|e| ceph_err(format!("reading the metadata of {home}/{image}"), e))?,
        );
        if !m.is_complete(&image) || m.owner().is_some_and(|o| o != name.as_str()) {
            continue;
        }
        let pubs = m.publications(&image)?;
        let records = m.attachments();
        if pubs.is_empty() && records.is_empty() {
            continue;
        }
        let watchers = if records.is_empty() {
            Vec::new()
        } else {
            img.list_watchers()
                .map_err(|e| ceph_err(format!("watchers of {home}/{image}"), e))?
        };
        let mut holders: Vec<&String> = pubs.keys().chain(records.keys()).collect();
        holders.sort();
        holders.dedup();
        for node in holders {
            let report = nodes.entry(node.clone()).or_insert_with(|| NodeReport {
                node_id: node.clone(),
                entry: None,
                state: NodeState::Unregistered,
                volumes: Vec::new(),
            });
            report.volumes.push(NodeVolume {
                volume_id: format!("{name}.{object}"),
                image: image.clone(),
                publication: pubs.get(node).cloned(),
                attachment: records.get(node).map(|r| {
                    let live = watchers.iter().any(|w| w.id as u64 == r.client);
                    (r.clone(), live)
                }),
            });
        }
    }
    Ok(PoolNodes {
        pool: name.clone(),
        home,
        settings,
        nodes: nodes.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(heartbeat: u64, interval: u64, stopped: Option<u64>) -> NodeEntry {
        NodeEntry {
            node_id: "n1".into(),
            address: "10.0.0.5:0/377".into(),
            client: 4142,
            hostname: "h".into(),
            pid: 1,
            version: "0".into(),
            started: 900,
            heartbeat,
            interval,
            stopped,
        }
    }

    #[test]
    fn states() {
        // (heartbeat, interval, stopped, now, threshold) → state
        let table = [
            (1000, 10, None, 1000, 60, NodeState::Running),
            (1000, 10, None, 1060, 60, NodeState::Running),
            (1000, 10, None, 1061, 60, NodeState::Stale),
            // From the future (a clock ahead): not stale.
            (2000, 10, None, 1000, 60, NodeState::Running),
            // A reader's threshold below three of the node's intervals.
            (1000, 30, None, 1080, 20, NodeState::Running),
            (1000, 30, None, 1091, 20, NodeState::Stale),
            (1000, 10, Some(1001), 1002, 60, NodeState::Stopped),
            (1000, 10, Some(1001), 9999, 60, NodeState::Stopped),
        ];
        for (hb, iv, stopped, now, thr, want) in table {
            assert_eq!(
                entry(hb, iv, stopped).state(now, thr),
                want,
                "{hb} {iv} {stopped:?} {now} {thr}"
            );
        }
    }

    #[test]
    fn publish_checks() {
        let pool = PoolName::parse("ceph").unwrap();
        let check =
            |e: Option<&NodeEntry>, now| check_publish(&pool, "kube/ceph", "n1", e, now, 60);
        let e = check(None, 1000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let m = e.to_string();
        assert!(
            m.contains("node_id \"n1\"") && m.contains("haina ctl nodes") && m.contains("keyring"),
            "{m}"
        );
        check(Some(&entry(1000, 10, None)), 1030).unwrap();
        let e = check(Some(&entry(1000, 10, None)), 1100).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let m = e.to_string();
        assert!(
            m.contains("100s ago") && m.contains("10.0.0.5:0/377") && m.contains("client.4142"),
            "{m}"
        );
        let e = check(Some(&entry(1000, 10, Some(1000))), 1001).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.to_string().contains("stopped"), "{e}");
    }

    #[test]
    fn settings() {
        let cfg = |extra: &str| {
            let text = format!(
                "[pools.p]\nkind = \"rbd\"\nmonitors = [\"1.2.3.4\"]\nrados_pool = \"k\"\n{extra}"
            );
            let c = crate::config::Config::parse(&text).unwrap();
            match c.pools.into_values().next().unwrap() {
                crate::config::PoolConfig::Rbd(r) => r,
                _ => unreachable!(),
            }
        };
        let p = PoolName::parse("p").unwrap();
        let s = |extra: &str| Settings::from_config(&p, &cfg(extra));
        let keyring = "user = \"u\"\nkeyring = \"/k\"\n";
        // auto: on with a keyring, off without.
        let on = s(keyring).unwrap();
        assert!(on.enforced() && on.registers(&p).unwrap());
        assert_eq!(on.heartbeat, Duration::from_secs(10));
        assert_eq!(on.stale_after, Duration::from_secs(60));
        let off = s("").unwrap();
        assert!(!off.enforced() && !off.registers(&p).unwrap());
        assert!(off.describe().contains("keyring"), "{}", off.describe());
        // on without a keyring: controllers check, node plugins cannot register.
        let forced = s("node_registry = \"on\"\n").unwrap();
        assert!(forced.enforced());
        let e = forced.registers(&p).unwrap_err();
        assert!(e.to_string().contains("keyring"), "{e}");
        // off with a keyring.
        let none = s(&format!("{keyring}node_registry = \"off\"\n")).unwrap();
        assert!(!none.enforced() && !none.registers(&p).unwrap());
        // Thresholds.
        s("node_heartbeat_seconds = 1\nnode_stale_seconds = 3\n").unwrap();
        assert!(s("node_heartbeat_seconds = 0\n").is_err());
        let e = s("node_heartbeat_seconds = 10\nnode_stale_seconds = 15\n").unwrap_err();
        assert!(e.to_string().contains("node_stale_seconds"), "{e}");
        assert!(
            crate::config::Config::parse(
                "[pools.p]\nkind = \"rbd\"\nrados_pool = \"k\"\nnode_registry = \"maybe\"\n"
            )
            .is_err()
        );
    }
}
