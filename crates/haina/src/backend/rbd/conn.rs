//! Credentials and the kept-open cluster connections of one RBD pool.
//!
//! Credentials travel with each request as an explicit value: the
//! request's CSI secrets (`userID`/`userKey`, as Kubernetes passes them) or,
//! when a request carries none, the pool's configured `user` + `keyring`
//! file. With neither, a call fails with FAILED_PRECONDITION naming both
//! ways to provide them; no call ever borrows another request's
//! credentials. A key only ever lives in memory as a [`Secret`]: it is read
//! from the keyring file when connecting and handed to librados, never
//! logged and never written anywhere.
//!
//! One connection is kept per cephx user and reused by the calls that
//! authenticate as that user *with the same key* (connecting costs a few
//! round trips to the monitors; an operation on an open connection costs one
//! or two to the OSDs). It is made lazily on first use, replaced when a
//! request brings a different key for the user that works (key rotation),
//! and dropped when an operation fails in a way that points at the
//! connection itself (timeout, blocklisting, refused auth).
//!
//! Failing to connect is told apart, because librados 16 cannot tell: over
//! msgr2 a wrong key and unreachable monitors both end in ETIMEDOUT once
//! `client_mount_timeout` has passed (msgr1 answers EACCES at once). So the
//! monitors are first probed with a short TCP connect that waits for the
//! daemon's banner (sent before any authentication): none answering is
//! UNAVAILABLE at once; monitors that greet us but do not
//! authenticate us within [`CONNECT_TIMEOUT`] (or an EACCES) mean the
//! credentials were refused: UNAUTHENTICATED, remembered for
//! [`REFUSED_FOR`] so that every later call with the same key fails at once
//! instead of waiting again.
//!
//! Each haina pool works in its own RBD namespace of the RADOS pool, created
//! (idempotently) on the first connection.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use haina_rbd::{Cluster, ConnectOpts, IoCtx, Secret};

use crate::error::{Error, Result};
use crate::volume::Secrets;

/// The CSI secret keys ceph-csi (and so every Ceph StorageClass) uses.
pub const SECRET_USER: &str = "userID";
pub const SECRET_KEY: &str = "userKey";

/// How long librados may take to connect and authenticate: well under the
/// CO's usual 10 s call timeout, far above a healthy cluster's ~20 ms.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one monitor or OSD operation may take on the controller path.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long refused credentials are answered from memory.
pub const REFUSED_FOR: Duration = Duration::from_secs(15);
/// The TCP connect, and then the wait for the banner, of one monitor address.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The whole monitor probe.
const PROBE_BOUND: Duration = Duration::from_millis(3500);

/// Who to authenticate as.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub key: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("key", &self.key)
            .finish()
    }
}

/// Where the cluster is, and which part of it is this pool's.
#[derive(Debug, Clone)]
pub struct ClusterAddr {
    /// `mon_host` for librados (may be empty when `ceph_conf` names them).
    pub mon_host: String,
    pub ceph_conf: Option<PathBuf>,
    pub rados_pool: String,
    /// The RBD namespace of the pool's images (empty: the default one).
    pub namespace: String,
}

impl ClusterAddr {
    /// `pool` or `pool/namespace`, as the `rbd` tools spell an image's home.
    pub fn home(&self) -> String {
        if self.namespace.is_empty() {
            self.rados_pool.clone()
        } else {
            format!("{}/{}", self.rados_pool, self.namespace)
        }
    }

    /// The monitors' `host:port` strings, from `mon_host` or the ceph.conf.
    pub fn monitors(&self) -> Vec<String> {
        if !self.mon_host.trim().is_empty() {
            return parse_mon_host(&self.mon_host);
        }
        self.ceph_conf
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| conf_mon_host(&text))
            .map(|m| parse_mon_host(&m))
            .unwrap_or_default()
    }
}

/// An open connection and an I/O context on the pool's namespace.
#[derive(Clone)]
pub struct Conn {
    pub cluster: Cluster,
    pub io: IoCtx,
    pub user: String,
    key: Secret,
}

impl Conn {
    /// This client's id, as it appears in watcher lists.
    pub fn instance_id(&self) -> u64 {
        self.cluster.instance_id()
    }

    /// Who this connection authenticated as (to hand to a FUSE server).
    pub fn credentials(&self) -> Credentials {
        Credentials {
            user: self.user.clone(),
            key: self.key.clone(),
        }
    }
}

/// Credentials the cluster refused, remembered briefly.
struct Refusal {
    key: Secret,
    at: Instant,
    message: String,
}

/// The connections of one pool, one per user.
pub struct Connections {
    addr: ClusterAddr,
    /// `user` + `keyring` from the config.
    configured: Option<(String, PathBuf)>,
    open: Mutex<HashMap<String, Conn>>,
    refused: Mutex<HashMap<String, Refusal>>,
}

impl Connections {
    /// The connections of haina pool `name` as configured (none open yet).
    pub fn for_pool(name: &crate::ids::PoolName, cfg: &crate::config::RbdConfig) -> Self {
        let configured = cfg.keyring.as_ref().map(|k| {
            let user = cfg.user.clone().unwrap_or_else(|| "admin".into());
            (user, k.clone())
        });
        let addr = ClusterAddr {
            mon_host: cfg.monitors.join(","),
            ceph_conf: cfg.ceph_conf.clone(),
            rados_pool: cfg.rados_pool.clone(),
            namespace: cfg.namespace_for(name),
        };
        Self::new(addr, configured)
    }

    pub fn new(addr: ClusterAddr, configured: Option<(String, PathBuf)>) -> Self {
        Self {
            addr,
            configured,
            open: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    pub fn addr(&self) -> &ClusterAddr {
        &self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conn>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Refusal>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The credentials a request's secrets name, else the configured ones,
    /// else FAILED_PRECONDITION saying how to provide them.
    pub fn credentials(&self, secrets: &Secrets) -> Result<Credentials> {
        if let Some(c) = from_secrets(secrets)? {
            return Ok(c);
        }
        match &self.configured {
            Some((user, keyring)) => Ok(Credentials {
                user: user.clone(),
                key: read_keyring(keyring, user)?,
            }),
            None => Err(no_credentials()),
        }
    }

    /// The connection for a request's secrets (or the configured keyring).
    pub fn get(&self, secrets: &Secrets) -> Result<Conn> {
        let creds = self.credentials(secrets)?;
        if let Some(c) = self.lock().get(&creds.user)
            && c.key == creds.key
        {
            return Ok(c.clone());
        }
        if let Some(r) = self.refusals().get(&creds.user)
            && r.key == creds.key
            && r.at.elapsed() < REFUSED_FOR
        {
            return Err(Error::Unauthenticated(r.message.clone()));
        }
        // Connect without holding the lock: it takes a few round trips.
        let conn = match self.connect(&creds) {
            Ok(c) => c,
            Err(e) => {
                if let Error::Unauthenticated(m) = &e {
                    self.refusals().insert(
                        creds.user.clone(),
                        Refusal {
                            key: creds.key.clone(),
                            at: Instant::now(),
                            message: m.clone(),
                        },
                    );
                }
                return Err(e);
            }
        };
        self.refusals().remove(&creds.user);
        self.lock().insert(creds.user.clone(), conn.clone());
        Ok(conn)
    }

    fn connect(&self, creds: &Credentials) -> Result<Conn> {
        let monitors = self.addr.monitors();
        let who = format!("client.{}", creds.user);
        let where_ = if monitors.is_empty() {
            "the monitors of the configured ceph_conf".to_string()
        } else {
            monitors.join(",")
        };
        // Unreachable monitors are told at once, without waiting for librados.
        let reachable = match probe_monitors(&monitors) {
            Probe::Unknown => None,
            Probe::Reachable(addr) => Some(addr),
            Probe::Unreachable(detail) => {
                return Err(Error::Unavailable(format!(
                    "cannot reach any Ceph monitor of pool {} ({detail})",
                    self.addr.home()
                )));
            }
        };
        let mut opts = ConnectOpts::new(
            self.addr.mon_host.clone(),
            creds.user.clone(),
            creds.key.clone(),
        );
        opts.conf_file = self.addr.ceph_conf.clone();
        opts.timeout = OP_TIMEOUT;
        opts.connect_timeout = Some(CONNECT_TIMEOUT);
        let cluster = Cluster::connect(&opts).map_err(|e| match e.errno() {
            // msgr1 refuses a bad key at once.
            Some(13 | 1 | 129 | 127 | 128) => Error::Unauthenticated(format!(
                "Ceph refused {who} at {where_} ({e}): check the key (secret {SECRET_KEY:?} or \
                 the pool's keyring) and that the user exists"
            )),
            Some(110) => match &reachable {
                Some(addr) => Error::Unauthenticated(format!(
                    "Ceph monitor {addr} accepts connections but did not authenticate {who} \
                     within {}s: the cephx key (secret {SECRET_KEY:?} or the pool's keyring) is \
                     wrong or the user does not exist",
                    CONNECT_TIMEOUT.as_secs()
                )),
                None => Error::Unavailable(format!(
                    "no Ceph monitor at {where_} answered {who} within {}s ({e})",
                    CONNECT_TIMEOUT.as_secs()
                )),
            },
            _ => ceph_err(format!("connecting to Ceph at {where_} as {who}"), e),
        })?;
        let io = self.open_namespace(&cluster)?;
        tracing::info!(user = %creds.user, mon_host = %self.addr.mon_host,
            home = %self.addr.home(), client = cluster.instance_id(), "connected to Ceph");
        Ok(Conn {
            cluster,
            io,
            user: creds.user.clone(),
            key: creds.key.clone(),
        })
    }

    /// The I/O context on this pool's namespace, creating the namespace if
    /// it does not exist yet (idempotent; racing creators both succeed).
    fn open_namespace(&self, cluster: &Cluster) -> Result<IoCtx> {
        let pool = &self.addr.rados_pool;
        let ns = &self.addr.namespace;
        let missing_pool = |e: haina_rbd::Error| {
            if e.is_not_found() {
                Error::FailedPrecondition(format!("the RADOS pool {pool:?} does not exist"))
            } else {
                ceph_err(format!("opening the RADOS pool {pool}"), e)
            }
        };
        if !ns.is_empty() {
            let root = cluster.ioctx(pool).map_err(missing_pool)?;
            let exists = root
                .namespace_exists(ns)
                .map_err(|e| ceph_err(format!("looking up the RBD namespace {pool}/{ns}"), e))?;
            if !exists {
                match root.namespace_create(ns) {
                    Ok(()) => {
                        tracing::info!(pool = %pool, namespace = %ns, "created the RBD namespace")
                    }
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => {
                        return Err(ceph_err(
                            format!(
                                "creating the RBD namespace {pool}/{ns} (the user needs write \
                                 access to the pool's default namespace to create it, or create \
                                 it with `rbd namespace create {pool}/{ns}`)"
                            ),
                            e,
                        ));
                    }
                }
            }
        }
        cluster.ioctx_in(pool, ns).map_err(missing_pool)
    }

    /// Drops `conn` from the cache if `err` says the connection itself is
    /// broken, so the next call reconnects.
    pub fn check(&self, conn: &Conn, err: &haina_rbd::Error) {
        if !is_connection_error(err) {
            return;
        }
        let mut open = self.lock();
        if open
            .get(&conn.user)
            .is_some_and(|c| c.cluster.instance_id() == conn.cluster.instance_id())
        {
            tracing::warn!(user = %conn.user, error = %err, "dropping the Ceph connection; the next call reconnects");
            open.remove(&conn.user);
        }
    }
}

/// Whether a monitor of the cluster accepts TCP connections (for Probe: it
/// needs no credentials, so it works on a node plugin without any).
pub fn reachable(addr: &ClusterAddr) -> Result<()> {
    match probe_monitors(&addr.monitors()) {
        Probe::Reachable(_) | Probe::Unknown => Ok(()),
        Probe::Unreachable(detail) => Err(Error::Unavailable(format!(
            "cannot reach any Ceph monitor of pool {} ({detail})",
            addr.home()
        ))),
    }
}

fn no_credentials() -> Error {
    Error::FailedPrecondition(format!(
        "no Ceph credentials: the request carries no secrets {SECRET_USER:?} and {SECRET_KEY:?}, \
         and the pool configures no user + keyring; pass the secrets (the StorageClass's \
         secret references) or set `user` and `keyring` on the pool"
    ))
}

enum Probe {
    /// No monitor address could be worked out (left to librados).
    Unknown,
    Reachable(String),
    Unreachable(String),
}

/// Probes every address of every monitor at once (a TCP connect and the
/// daemon's banner, at most [`PROBE_TIMEOUT`] each) and answers at the
/// first that greets us, or once all failed; never later than
/// [`PROBE_BOUND`] (name resolution included).
fn probe_monitors(monitors: &[String]) -> Probe {
    if monitors.is_empty() {
        return Probe::Unknown;
    }
    let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<String, String>>();
    let mut pending = 0usize;
    for m in monitors {
        let (m, tx) = (m.clone(), tx.clone());
        pending += 1;
        let spawned = std::thread::Builder::new()
            .name("mon-probe".into())
            .spawn(move || match m.to_socket_addrs() {
                Err(e) => {
                    let _ = tx.send(Err(format!("{m}: {e}")));
                }
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    let workers: Vec<_> = addrs
                        .into_iter()
                        .map(|a| {
                            let m = m.clone();
                            std::thread::spawn(move || match greets(&a) {
                                Ok(()) => Ok(m),
                                Err(e) => Err(format!("{a}: {e}")),
                            })
                        })
                        .collect();
                    let mut errors = Vec::new();
                    for w in workers {
                        match w.join() {
                            Ok(Ok(m)) => {
                                let _ = tx.send(Ok(m));
                                return;
                            }
                            Ok(Err(e)) => errors.push(e),
                            Err(_) => errors.push(format!("{m}: probe panicked")),
                        }
                    }
                    let _ = tx.send(Err(errors.join("; ")));
                }
            });
        if spawned.is_err() {
            pending -= 1;
        }
    }
    drop(tx);
    let deadline = Instant::now() + PROBE_BOUND;
    let mut failures = Vec::new();
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(m)) => return Probe::Reachable(m),
            Ok(Err(e)) => {
                failures.push(e);
                pending -= 1;
            }
            Err(_) => {
                failures.push(format!("no answer within {PROBE_BOUND:?}"));
                break;
            }
        }
    }
    Probe::Unreachable(failures.join("; "))
}

/// Whether a Ceph daemon answers at `addr`: it accepts a TCP connection
/// and sends its banner (`ceph v2` for msgr2, `ceph v027` for msgr1) at
/// once, before any authentication. A hung monitor whose kernel still
/// accepts connections sends nothing.
fn greets(addr: &SocketAddr) -> std::io::Result<()> {
    use std::io::Read;
    let mut s = TcpStream::connect_timeout(addr, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut banner = [0u8; 6];
    match s.read_exact(&mut banner) {
        Ok(()) if &banner == b"ceph v" => Ok(()),
        Ok(()) => Err(std::io::Error::other(
            "accepted the connection but is not a Ceph daemon",
        )),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("accepted the connection but sent no banner ({e})"),
        )),
    }
}

/// `host:port` of each monitor in a `mon_host` value. Understands plain
/// addresses (`10.0.0.1`, `10.0.0.1:6789`, `mon-a`), address vectors
/// (`[v2:10.0.0.1:3300,v1:10.0.0.1:6789]`), nonces (`/0`) and bracketed
/// IPv6 (`[::1]:3300`). A monitor without a port gets both defaults.
pub fn parse_mon_host(mon_host: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    // Tokens split on separators outside IPv6 brackets; vector brackets
    // (`[v2:...,v1:...]`) are dropped first.
    let cleaned = mon_host.replace("[v", "v").replace("],", ",");
    let cleaned = cleaned.trim_end_matches(']');
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for ch in cleaned.chars() {
        match ch {
            '[' => {
                depth += 1;
                cur.push(ch);
            }
            ']' => {
                depth -= 1;
                cur.push(ch);
            }
            ',' | ';' | ' ' | '\t' if depth == 0 => tokens.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    tokens.push(cur);
    for t in tokens {
        let t = t.trim();
        let t = t
            .strip_prefix("v2:")
            .or_else(|| t.strip_prefix("v1:"))
            .unwrap_or(t);
        let t = t.split('/').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        let has_port = if t.starts_with('[') {
            t.contains("]:")
        } else {
            t.matches(':').count() == 1
        };
        if has_port {
            push(t.to_string());
        } else {
            let host = if t.contains(':') && !t.starts_with('[') {
                format!("[{t}]")
            } else {
                t.to_string()
            };
            push(format!("{host}:3300"));
            push(format!("{host}:6789"));
        }
    }
    out
}

/// `mon_host` (or `mon host`) from a ceph.conf's text.
fn conf_mon_host(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        let k = k.trim().replace(' ', "_");
        (k == "mon_host").then(|| v.trim().to_string())
    })
}

/// Errors that mean "this connection is no good", not "this operation failed".
pub fn is_connection_error(e: &haina_rbd::Error) -> bool {
    // ETIMEDOUT, ESHUTDOWN (blocklisted), ENOTCONN, ECONNREFUSED, EACCES,
    // EKEYREJECTED, EKEYEXPIRED.
    matches!(e.errno(), Some(110 | 108 | 107 | 111 | 13 | 129 | 127))
}

/// Credentials from CSI secrets, if the request has any.
pub fn from_secrets(secrets: &Secrets) -> Result<Option<Credentials>> {
    let user = secrets.0.get(SECRET_USER);
    let key = secrets.0.get(SECRET_KEY);
    match (user, key) {
        (None, None) => Ok(None),
        (Some(u), Some(k)) if !u.trim().is_empty() && !k.trim().is_empty() => {
            Ok(Some(Credentials {
                user: u.trim().trim_start_matches("client.").to_string(),
                key: Secret::new(k.trim()),
            }))
        }
        _ => Err(Error::InvalidArgument(format!(
            "secrets: {SECRET_USER:?} and {SECRET_KEY:?} must both be set and non-empty"
        ))),
    }
}

/// Reads `user`'s key from a Ceph keyring file (`[client.NAME]` / `key = ...`).
pub fn read_keyring(path: &Path, user: &str) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::internal(format!("reading keyring {}", path.display()), e))?;
    parse_keyring(&text, user).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "keyring {} has no key for client.{user}",
            path.display()
        ))
    })
}

fn parse_keyring(text: &str, user: &str) -> Option<Secret> {
    let user = user.trim_start_matches("client.");
    let wanted = format!("client.{user}");
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = section.trim() == wanted;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == "key"
        {
            return Some(Secret::new(v.trim()));
        }
    }
    None
}

/// Maps a Ceph error to the driver's error, naming what was being done.
/// A missing librbd is a property of the machine: FAILED_PRECONDITION.
pub fn ceph_err(what: impl Into<String>, e: haina_rbd::Error) -> Error {
    match e {
        haina_rbd::Error::Library(l) => Error::FailedPrecondition(format!("{}: {l}", what.into())),
        // The cluster did not answer in time: the CO retries later.
        e if e.errno() == Some(110) => Error::Unavailable(format!("{}: {e}", what.into())),
        other => Error::internal(what, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_parsing() {
        let text = "[client.admin]\n\tkey = AQAdmin==\n[client.haina]\n\tkey = AQHaina==\n\tcaps mon = \"profile rbd\"\n";
        assert_eq!(parse_keyring(text, "haina").unwrap().expose(), "AQHaina==");
        assert_eq!(
            parse_keyring(text, "client.admin").unwrap().expose(),
            "AQAdmin=="
        );
        assert!(parse_keyring(text, "nobody").is_none());
    }

    #[test]
    fn monitor_addresses() {
        assert_eq!(parse_mon_host("127.0.0.1:3300"), vec!["127.0.0.1:3300"]);
        assert_eq!(
            parse_mon_host("10.0.0.1, 10.0.0.2:6789"),
            vec!["10.0.0.1:3300", "10.0.0.1:6789", "10.0.0.2:6789"]
        );
        assert_eq!(
            parse_mon_host(
                "[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0],[v2:10.0.0.2:3300,v1:10.0.0.2:6789]"
            ),
            vec![
                "10.0.0.1:3300",
                "10.0.0.1:6789",
                "10.0.0.2:3300",
                "10.0.0.2:6789"
            ]
        );
        assert_eq!(parse_mon_host("[::1]:3300"), vec!["[::1]:3300"]);
        assert_eq!(parse_mon_host("mon-a"), vec!["mon-a:3300", "mon-a:6789"]);
        assert!(parse_mon_host(" ").is_empty());
        assert_eq!(
            conf_mon_host("[global]\nfsid = x\nmon host = 1.2.3.4:3300\n").as_deref(),
            Some("1.2.3.4:3300")
        );
    }

    #[test]
    fn secrets() {
        let s = |kv: &[(&str, &str)]| {
            Secrets(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert!(from_secrets(&s(&[])).unwrap().is_none());
        let c = from_secrets(&s(&[("userID", "client.kube"), ("userKey", "AQk==")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.user, "kube");
        assert!(!format!("{c:?}").contains("AQk"));
        assert!(matches!(
            from_secrets(&s(&[("userID", "kube")])),
            Err(Error::InvalidArgument(_))
        ));
    }
}
