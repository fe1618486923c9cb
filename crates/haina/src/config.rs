//! The pool configuration (`--config FILE`, TOML).
//!
//! ```toml
//! default_pool = "default"      # used when a StorageClass names no pool
//!
//! [pools.default]
//! kind = "local"                # image files on loop devices
//! # path = "/srv/haina/default" # default: <data-dir>/pools/<name>
//! # overcommit = 1.5            # promise up to 1.5 × the free space (default: never more than it has)
//! # qos = "auto"                # auto | off: enforce the qos* mutable parameters (loop device throttling)
//! # qos_cgroups = ["/sys/fs/cgroup/kubepods.slice"]  # cgroup v2: where io.max holds the limits
//!
//! [pools.ceph]
//! kind = "rbd"
//! monitors = ["10.0.0.1:6789"]
//! rados_pool = "kube"
//! # namespace = "ceph"          # RBD namespace; default: the pool's name
//! mounter = "auto"              # auto | krbd | nbd | fuse
//! # node_registry = "auto"      # auto (on with a keyring) | on | off
//! # node_heartbeat_seconds = 10
//! # node_stale_seconds = 60
//! ```
//!
//! Two RBD pools never share images: each works in its own RBD namespace
//! of its RADOS pool, and a config where two of them resolve to the same
//! cluster, RADOS pool and namespace is refused at load.
//!
//! With no config file at all haina runs on the embedded default: one local
//! pool named `default` under `--data-dir`. A config file that configures no
//! pool (empty, only comments) is refused, never read as "the default": an
//! empty ConfigMap must not turn a Ceph driver into a local-disk one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ids::PoolName;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub default_pool: Option<PoolName>,
    #[serde(default)]
    pub pools: BTreeMap<PoolName, PoolConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PoolConfig {
    Local(LocalConfig),
    Rbd(RbdConfig),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Where images live; default `<data-dir>/pools/<name>`.
    pub path: Option<PathBuf>,
    /// Attach loop devices with direct I/O (no double caching). Default on.
    #[serde(default = "yes")]
    pub direct_io: bool,
    /// Thin provisioning: let the pool promise volumes up to this many times
    /// its free space (at least 1.0). Unset, the pool never promises more
    /// than it has, so no volume loses a write because another filled it.
    #[serde(default)]
    pub overcommit: Option<f64>,
    /// The `qos*` mutable parameters (see `qos.rs`): `auto` enforces them
    /// with the kernel's block-layer throttling of each volume's loop device
    /// where this node offers it (cgroup v1 blkio, or v2 `io.max` in
    /// `qos_cgroups`); `off` refuses them. Where neither is found the pool
    /// refuses them too, saying why.
    #[serde(default)]
    pub qos: QosMode,
    /// cgroup v2 only: the cgroups whose `io.max` holds the limits (they
    /// limit the I/O of the processes under them). Default: `kubepods.slice`
    /// or `kubepods` under `/sys/fs/cgroup`, when they have an `io.max`.
    #[serde(default)]
    pub qos_cgroups: Vec<PathBuf>,
}

/// Whether a local pool enforces QoS limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosMode {
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbdConfig {
    #[serde(default)]
    pub monitors: Vec<String>,
    pub ceph_conf: Option<PathBuf>,
    pub rados_pool: String,
    /// The RBD namespace of the pool's images inside `rados_pool`; default
    /// the haina pool's name. `""` is the RADOS pool's default namespace
    /// (where images made before namespaces live).
    pub namespace: Option<String>,
    #[serde(default)]
    pub image_features: Vec<String>,
    #[serde(default = "auto")]
    pub mounter: String,
    /// Credentials when the CO passes no secrets.
    pub user: Option<String>,
    pub keyring: Option<PathBuf>,
    /// Flatten a clone once its chain of parents is this deep.
    #[serde(default = "clone_depth")]
    pub clone_depth_limit: u32,
    /// The pool's node registry (docs/rbd.md, "The node registry"): node
    /// plugins register and heartbeat; ControllerPublish refuses node IDs
    /// it does not hold.
    #[serde(default)]
    pub node_registry: NodeRegistry,
    /// How often a node plugin heartbeats into the registry, in seconds.
    #[serde(default = "node_heartbeat")]
    pub node_heartbeat_seconds: u64,
    /// A node whose last heartbeat is older than this (in seconds) is stale.
    #[serde(default = "node_stale")]
    pub node_stale_seconds: u64,
}

/// Whether an RBD pool keeps a node registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRegistry {
    /// On when the pool configures `user` + `keyring` (what a node plugin
    /// registers with), off otherwise.
    #[default]
    Auto,
    /// Always: node plugins must have a keyring; controllers check node IDs.
    On,
    /// Never: no registration, no check.
    Off,
}

impl RbdConfig {
    /// The RBD namespace of pool `name`: the configured one, else `name`.
    pub fn namespace_for(&self, name: &PoolName) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| name.as_str().to_string())
    }

    /// What identifies the images' home: the cluster (its sorted monitors,
    /// else its ceph.conf), the RADOS pool and the namespace.
    fn home(&self, name: &PoolName) -> (String, String, String) {
        let cluster = if self.monitors.is_empty() {
            self.ceph_conf
                .as_ref()
                .map(|p| {
                    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                    format!("ceph_conf {}", p.display())
                })
                .unwrap_or_default()
        } else {
            let mut m: Vec<String> = self
                .monitors
                .iter()
                .flat_map(|m| crate::backend::rbd::conn::parse_mon_host(m))
                .collect();
            m.sort();
            m.dedup();
            format!("monitors {}", m.join(","))
        };
        (cluster, self.rados_pool.clone(), self.namespace_for(name))
    }
}

/// Refuses two RBD pools whose images would share one home: each would
/// list, and could delete, the other's volumes.
fn check_rbd_homes(pools: &BTreeMap<PoolName, PoolConfig>) -> Result<()> {
    let mut seen: BTreeMap<(String, String, String), &PoolName> = BTreeMap::new();
    for (name, pc) in pools {
        let PoolConfig::Rbd(r) = pc else { continue };
        if let Some(ns) = &r.namespace
            && !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Error::InvalidArgument(format!(
                "pool {name}: namespace {ns:?} may only contain letters, digits, '-', '_' and '.'"
            )));
        }
        let home = r.home(name);
        if let Some(other) = seen.insert(home.clone(), name) {
            let (cluster, rados_pool, ns) = home;
            return Err(Error::InvalidArgument(format!(
                "pools {other} and {name} both keep their images in RADOS pool {rados_pool:?}, \
                 namespace {ns:?} of the cluster at {cluster}: they would see and delete each \
                 other's volumes; give one of them another `namespace`"
            )));
        }
    }
    Ok(())
}

fn yes() -> bool {
    true
}
fn auto() -> String {
    "auto".into()
}
fn clone_depth() -> u32 {
    8
}
fn node_heartbeat() -> u64 {
    10
}
fn node_stale() -> u64 {
    60
}

impl Config {
    /// Reads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut cfg = match path {
            None => Self::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::internal(format!("reading config {}", p.display()), e))?;
                let cfg =
                    Self::parse(&text).map_err(|e| e.context(format!("config {}", p.display())))?;
                if cfg.pools.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "config {} configures no pool ({} bytes, no [pools.<name>] table); \
                         refusing to guess: name the pools, or run without --config for the \
                         embedded default local pool",
                        p.display(),
                        text.len()
                    )));
                }
                cfg
            }
        };
        if cfg.pools.is_empty() {
            cfg.pools.insert(
                PoolName::parse("default")?,
                PoolConfig::Local(LocalConfig {
                    path: None,
                    direct_io: true,
                    overcommit: None,
                    qos: QosMode::Auto,
                    qos_cgroups: Vec::new(),
                }),
            );
        }
        for (name, pool) in &cfg.pools {
            if let PoolConfig::Local(LocalConfig {
                overcommit: Some(r),
                ..
            }) = pool
                && !(r.is_finite() && (1.0..=100.0).contains(r))
            {
                return Err(Error::InvalidArgument(format!(
                    "pools.{name}.overcommit = {r}: must be a ratio from 1.0 (none) to 100"
                )));
            }
        }
        check_rbd_homes(&cfg.pools)?;
        if let Some(d) = &cfg.default_pool
            && !cfg.pools.contains_key(d)
        {
            return Err(Error::InvalidArgument(format!(
                "default_pool {d:?} is not one of the configured pools"
            )));
        }
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::InvalidArgument(format!("invalid TOML: {e}")))
    }

    /// The pool used when a request names none: `default_pool`, else a pool
    /// named `default`, else the only pool.
    pub fn default_pool(&self) -> Option<PoolName> {
        if let Some(d) = &self.default_pool {
            return Some(d.clone());
        }
        let default = PoolName::parse("default").ok()?;
        if self.pools.contains_key(&default) {
            return Some(default);
        }
        (self.pools.len() == 1)
            .then(|| self.pools.keys().next().cloned())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.default_pool().unwrap().as_str(), "default");
        assert!(matches!(c.pools.values().next(), Some(PoolConfig::Local(l)) if l.direct_io));
    }

    #[test]
    fn a_config_file_without_pools_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("empty.toml", ""),
            ("blank.toml", "\n  \n# nothing here\n"),
            ("no-pools.toml", "[pools]\n"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let e = Config::load(Some(&p)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains(name) && m.contains("no pool")),
                "{name}: {e}"
            );
        }
        let p = dir.path().join("one.toml");
        std::fs::write(&p, "[pools.fast]\nkind = \"local\"\n").unwrap();
        assert_eq!(Config::load(Some(&p)).unwrap().pools.len(), 1);
    }

    #[test]
    fn parses_both_kinds_and_rejects_typos() {
        let c = Config::parse(
            r#"
            default_pool = "fast"
            [pools.fast]
            kind = "local"
            path = "/srv/fast"
            [pools.ceph]
            kind = "rbd"
            monitors = ["127.0.0.1:6789"]
            rados_pool = "kube"
            "#,
        )
        .unwrap();
        assert_eq!(c.default_pool().unwrap().as_str(), "fast");
        assert!(
            matches!(&c.pools[&PoolName::parse("ceph").unwrap()], PoolConfig::Rbd(r) if r.mounter == "auto")
        );
        let e = Config::parse("[pools.a]\nkind = \"local\"\npaht = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("paht"), "{e}");
        assert!(Config::parse("[pools.a]\nkind = \"nfs\"\n").is_err());
        assert!(Config::parse("[pools.Bad]\nkind = \"local\"\n").is_err());
        let c = Config::parse("[pools.thin]\nkind = \"local\"\novercommit = 1.5\n").unwrap();
        assert!(
            matches!(c.pools.values().next(), Some(PoolConfig::Local(l)) if l.overcommit == Some(1.5))
        );
    }

    #[test]
    fn qos_settings_of_local_pools() {
        let local = |text: &str| match Config::parse(text).map(|c| c.pools.into_values().next()) {
            Ok(Some(PoolConfig::Local(l))) => Ok(l),
            Ok(_) => panic!("not a local pool"),
            Err(e) => Err(e),
        };
        let l = local("[pools.a]\nkind = \"local\"\n").unwrap();
        assert_eq!((l.qos, l.qos_cgroups.len()), (QosMode::Auto, 0));
        let l = local(
            "[pools.a]\nkind = \"local\"\nqos = \"off\"\nqos_cgroups = [\"/sys/fs/cgroup/k.slice\"]\n",
        )
        .unwrap();
        assert_eq!(l.qos, QosMode::Off);
        assert_eq!(l.qos_cgroups, vec![PathBuf::from("/sys/fs/cgroup/k.slice")]);
        let e = local("[pools.a]\nkind = \"local\"\nqos = \"on\"\n").unwrap_err();
        assert!(e.to_string().contains("on"), "{e}");
    }

    #[test]
    fn overcommit_below_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["0.5", "-1.0", "nan", "inf", "1000.0"] {
            let p = dir.path().join("c.toml");
            std::fs::write(
                &p,
                format!("[pools.a]\nkind = \"local\"\novercommit = {bad}\n"),
            )
            .unwrap();
            let e = Config::load(Some(&p)).unwrap_err();
            assert!(e.to_string().contains("pools.a.overcommit"), "{bad}: {e}");
        }
    }

    #[test]
    fn rbd_pools_sharing_a_namespace_are_refused() {
        let load = |text: &str| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).unwrap();
            Config::load(Some(&p))
        };
        let pool = |name: &str, mons: &str, extra: &str| {
            format!(
                "[pools.{name}]\nkind = \"rbd\"\nmonitors = [{mons}]\nrados_pool = \"kube\"\n{extra}"
            )
        };
        // Two pools on one RADOS pool: each in its own namespace by default.
        let ok = pool("a", "\"10.0.0.1:3300\"", "") + &pool("b", "\"10.0.0.1:3300\"", "");
        let c = load(&ok).unwrap();
        let PoolConfig::Rbd(a) = &c.pools[&PoolName::parse("a").unwrap()] else {
            panic!()
        };
        assert_eq!(a.namespace_for(&PoolName::parse("a").unwrap()), "a");
        // The same namespace named twice (monitors listed in another order).
        let dup = pool(
            "a",
            "\"10.0.0.1:3300\", \"10.0.0.2:3300\"",
            "namespace = \"x\"\n",
        ) + &pool(
            "b",
            "\"10.0.0.2:3300,10.0.0.1:3300\"",
            "namespace = \"x\"\n",
        );
        let e = load(&dup).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.to_string();
        assert!(m.contains("pools a and b") && m.contains("\"x\""), "{m}");
        // One pool naming the other's default namespace.
        let dup = pool("a", "\"10.0.0.1\"", "") + &pool("b", "\"10.0.0.1\"", "namespace = \"a\"\n");
        assert!(load(&dup).is_err());
        // Another cluster may use the same names.
        let other = pool("a", "\"10.0.0.1\"", "namespace = \"x\"\n")
            + &pool("b", "\"10.9.9.9\"", "namespace = \"x\"\n");
        load(&other).unwrap();
        assert!(load(&pool("a", "\"10.0.0.1\"", "namespace = \"a/b\"\n")).is_err());
    }
}
