//! Credentials and the kept-open cluster connection of one RBD pool.
//!
//! Credentials come from the request's CSI secrets (`userID`/`userKey`, as
//! Kubernetes passes them) or, when a request carries none, from the pool's
//! configured `user` + `keyring` file. A key only ever lives in memory as a
//! [`Secret`]: it is read from the keyring file when connecting and handed to
//! librados, never logged and never written anywhere.
//!
//! One connection is kept per cephx user and reused by every operation of
//! the pool (connecting costs a few round trips to the monitors; an
//! operation on an open connection costs one or two to the OSDs). It is
//! made lazily on first use, replaced when a request brings a different key
//! for the same user (key rotation), and dropped when an operation fails in
//! a way that points at the connection itself (timeout, blocklisting,
//! refused auth), so the next call reconnects.
//!
//! Methods of the `Backend` trait that take no secrets (`get_volume`,
//! `set_publication`, ...) use the configured keyring, else the most
//! recently used connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use haina_rbd::{Cluster, ConnectOpts, IoCtx, Secret};

use crate::error::{Error, Result};
use crate::volume::Secrets;

/// The CSI secret keys ceph-csi (and so every Ceph StorageClass) uses.
pub const SECRET_USER: &str = "userID";
pub const SECRET_KEY: &str = "userKey";

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

/// Where the cluster is.
#[derive(Debug, Clone)]
pub struct ClusterAddr {
    /// `mon_host` for librados (may be empty when `ceph_conf` names them).
    pub mon_host: String,
    pub ceph_conf: Option<PathBuf>,
    pub rados_pool: String,
}

/// An open connection and an I/O context on the pool.
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

/// The connections of one pool, one per user.
pub struct Connections {
    addr: ClusterAddr,
    /// `user` + `keyring` from the config.
    configured: Option<(String, PathBuf)>,
    open: Mutex<Pool>,
    timeout: Duration,
}

#[derive(Default)]
struct Pool {
    by_user: HashMap<String, Conn>,
    last_user: Option<String>,
}

impl Connections {
    pub fn new(addr: ClusterAddr, configured: Option<(String, PathBuf)>) -> Self {
        Self {
            addr,
            configured,
            open: Mutex::new(Pool::default()),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn addr(&self) -> &ClusterAddr {
        &self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The credentials a request's secrets name, else the configured ones.
    pub fn credentials(&self, secrets: &Secrets) -> Result<Option<Credentials>> {
        if let Some(c) = from_secrets(secrets)? {
            return Ok(Some(c));
        }
        match &self.configured {
            Some((user, keyring)) => Ok(Some(Credentials {
                user: user.clone(),
                key: read_keyring(keyring, user)?,
            })),
            None => Ok(None),
        }
    }

    /// The connection for a request's secrets (or the configured keyring).
    pub fn get(&self, secrets: &Secrets) -> Result<Conn> {
        match self.credentials(secrets)? {
            Some(c) => self.connect_as(c),
            None => self.any()?.ok_or_else(no_credentials),
        }
    }

    /// A connection for a call that carries no secrets: the configured
    /// keyring's, else the most recently used one. `None` if neither exists.
    pub fn any(&self) -> Result<Option<Conn>> {
        if let Some((user, _)) = &self.configured {
            if let Some(c) = self.lock().by_user.get(user) {
                return Ok(Some(c.clone()));
            }
            let creds = self.credentials(&Secrets::default())?;
            return creds.map(|c| self.connect_as(c)).transpose();
        }
        let pool = self.lock();
        Ok(pool
            .last_user
            .as_ref()
            .and_then(|u| pool.by_user.get(u))
            .cloned())
    }

    fn connect_as(&self, creds: Credentials) -> Result<Conn> {
        {
            let mut pool = self.lock();
            if let Some(c) = pool.by_user.get(&creds.user)
                && c.key == creds.key
            {
                let c = c.clone();
                pool.last_user = Some(creds.user);
                return Ok(c);
            }
        }
        // Connect without holding the lock: it takes a few round trips.
        let mut opts = ConnectOpts::new(
            self.addr.mon_host.clone(),
            creds.user.clone(),
            creds.key.clone(),
        );
        opts.conf_file = self.addr.ceph_conf.clone();
        opts.timeout = self.timeout;
        let cluster = Cluster::connect(&opts).map_err(|e| ceph_err("connecting to Ceph", e))?;
        let io = cluster
            .ioctx(&self.addr.rados_pool)
            .map_err(|e| ceph_err("opening the RADOS pool", e))?;
        tracing::info!(user = %creds.user, mon_host = %self.addr.mon_host,
            rados_pool = %self.addr.rados_pool, client = cluster.instance_id(), "connected to Ceph");
        let conn = Conn {
            cluster,
            io,
            user: creds.user.clone(),
            key: creds.key,
        };
        let mut pool = self.lock();
        pool.by_user.insert(creds.user.clone(), conn.clone());
        pool.last_user = Some(creds.user);
        Ok(conn)
    }

    /// Drops `conn` from the cache if `err` says the connection itself is
    /// broken, so the next call reconnects.
    pub fn check(&self, conn: &Conn, err: &haina_rbd::Error) {
        if !is_connection_error(err) {
            return;
        }
        let mut pool = self.lock();
        if pool
            .by_user
            .get(&conn.user)
            .is_some_and(|c| c.cluster.instance_id() == conn.cluster.instance_id())
        {
            tracing::warn!(user = %conn.user, error = %err, "dropping the Ceph connection; the next call reconnects");
            pool.by_user.remove(&conn.user);
        }
    }
}

fn no_credentials() -> Error {
    Error::FailedPrecondition(format!(
        "no Ceph credentials: the request has no secrets {SECRET_USER:?}/{SECRET_KEY:?} and the pool \
         configures no user + keyring"
    ))
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
