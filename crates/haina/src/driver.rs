//! The driver: configured pools, this node's identity, and the in-flight
//! guard, shared by every service.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use haina_sys::host::{RealHost, SharedHost};

use crate::backend::SharedBackend;
use crate::backend::local::LocalPool;
use crate::backend::rbd::RbdPool;
use crate::config::{Config, PoolConfig};
use crate::error::{Error, Result};
use crate::ids::{ObjectId, PoolName};
use crate::limiter::Limiter;

pub const DRIVER_NAME: &str = "haina.csi.dev";

/// Which CSI services this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub controller: bool,
    pub node: bool,
}

pub struct Driver {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub services: Services,
    pub max_volumes_per_node: i64,
    pub pools: BTreeMap<PoolName, SharedBackend>,
    pub default_pool: Option<PoolName>,
    pub limiter: Limiter,
    /// The kernel: every node-side host call goes through it.
    pub host: SharedHost,
    /// Volumes whose last unstage stalled on a hung data path; the next
    /// unstage of one forces the teardown.
    stalled: Mutex<HashSet<crate::ids::VolumeId>>,
    /// Held while a stage checks the attach limit and claims a slot.
    pub(crate) slots: Mutex<()>,
}

impl Driver {
    /// Opens every configured pool, on the real kernel.
    pub fn new(
        config: &Config,
        node_id: String,
        data_dir: PathBuf,
        services: Services,
    ) -> Result<Self> {
        Self::with_host(config, node_id, data_dir, services, Arc::new(RealHost))
    }

    /// Opens every configured pool on `host` (a fake one in unit tests).
    pub fn with_host(
        config: &Config,
        node_id: String,
        data_dir: PathBuf,
        services: Services,
        host: SharedHost,
    ) -> Result<Self> {
        let mut pools: BTreeMap<PoolName, SharedBackend> = BTreeMap::new();
        for (name, pc) in &config.pools {
            let backend: SharedBackend = match pc {
                PoolConfig::Local(l) => {
                    let root = l
                        .path
                        .clone()
                        .unwrap_or_else(|| data_dir.join("pools").join(name.as_str()));
                    Arc::new(
                        LocalPool::open(
                            name.clone(),
                            root,
                            node_id.clone(),
                            l.direct_io,
                            host.clone(),
                        )?
                        .with_overcommit(l.overcommit)
                        .with_qos(l.qos, &l.qos_cgroups),
                    )
                }
                PoolConfig::Rbd(r) => {
                    Arc::new(RbdPool::open(name.clone(), r, node_id.clone(), &data_dir)?)
                }
            };
            pools.insert(name.clone(), backend);
        }
        Ok(Self {
            node_id,
            data_dir,
            services,
            max_volumes_per_node: 0,
            pools,
            default_pool: config.default_pool(),
            limiter: Limiter::default(),
            host,
            stalled: Mutex::default(),
            slots: Mutex::default(),
        })
    }

    fn stalled_set(&self) -> std::sync::MutexGuard<'_, HashSet<crate::ids::VolumeId>> {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the volume's last unstage stalled.
    pub fn is_stalled(&self, id: &crate::ids::VolumeId) -> bool {
        self.stalled_set().contains(id)
    }

    pub fn mark_stalled(&self, id: &crate::ids::VolumeId) {
        self.stalled_set().insert(id.clone());
    }

    pub fn clear_stalled(&self, id: &crate::ids::VolumeId) {
        self.stalled_set().remove(id);
    }

    /// A node-side driver as `haina serve --services node` would build it,
    /// for the tools that act on this node (`explain`, `flexvolume`).
    pub fn for_node(
        config: Option<&std::path::Path>,
        node_id: Option<&str>,
        data_dir: PathBuf,
    ) -> Result<Self> {
        let config = Config::load(config)?;
        let node_id =
            crate::ids::node_id("--node-id", &node_id.map_or_else(hostname, String::from))?;
        Self::new(
            &config,
            node_id,
            data_dir,
            Services {
                controller: false,
                node: true,
            },
        )
    }

    /// The pool an ID lives in; an unknown pool means the object does not exist.
    pub fn pool_of(&self, id: &ObjectId) -> Result<&SharedBackend> {
        self.pools.get(id.pool()).ok_or_else(|| {
            Error::NotFound(format!(
                "{id}: no pool named {:?} on this driver",
                id.pool().as_str()
            ))
        })
    }

    /// The pool named by a `pool` parameter, or the default pool.
    pub fn pool_named(&self, name: Option<&str>) -> Result<&SharedBackend> {
        let name = match name {
            Some(n) => PoolName::parse(n).map_err(|e| e.context("parameters.pool"))?,
            None => self.default_pool.clone().ok_or_else(|| {
                Error::InvalidArgument(
                    "parameters.pool is required: this driver has no default pool".into(),
                )
            })?,
        };
        self.pools.get(&name).ok_or_else(|| {
            let known: Vec<_> = self.pools.keys().map(|p| p.as_str()).collect();
            Error::InvalidArgument(format!(
                "parameters.pool {:?} is not configured (pools: {})",
                name.as_str(),
                known.join(", ")
            ))
        })
    }
}

/// This machine's hostname: the default node ID.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
