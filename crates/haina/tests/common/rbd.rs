//! Harness for the RBD tests: the Ceph cluster from the environment, `haina
//! serve` processes with an RBD pool config (controller and node plugins
//! may be separate processes, as in a real deployment), CSI requests that
//! carry the credentials as secrets, and leak checks that include FUSE
//! servers and RBD images.
//!
//! The cluster comes from HAINA_CEPH_MON/USER/KEY/POOL (see
//! `scripts/ceph/cluster.sh`). Without them a test fails and says how to
//! boot one, unless HAINA_SKIP_CEPH=1, which makes it print "skipped".
//! Include it with `#[path = "common/rbd.rs"] mod rbd;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use haina_csi::v1 as csi;

use crate::common::{
    Clients, Mode, connect_clients, force_cleanup, loops_under, wait_until_serving,
};

pub const MIB: i64 = 1 << 20;

/// The test cluster.
#[derive(Clone)]
pub struct Ceph {
    pub mon: String,
    pub user: String,
    pub key: String,
    pub pool: String,
}

impl Ceph {
    /// The cluster from the environment; `None` (after printing "skipped")
    /// when HAINA_SKIP_CEPH=1 and there is none.
    pub fn from_env(test: &str) -> Option<Ceph> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            get("HAINA_CEPH_MON"),
            get("HAINA_CEPH_USER"),
            get("HAINA_CEPH_KEY"),
            get("HAINA_CEPH_POOL"),
        ) {
            (Some(mon), Some(user), Some(key), Some(pool)) => Some(Ceph {
                mon,
                user,
                key,
                pool,
            }),
            _ if std::env::var("HAINA_SKIP_CEPH").as_deref() == Ok("1") => {
                println!(
                    "{test}: skipped (HAINA_SKIP_CEPH=1 and no Ceph cluster in the environment)"
                );
                None
            }
            _ => panic!(
                "{test}: no Ceph cluster: HAINA_CEPH_MON/USER/KEY/POOL are not set. Boot one with\n  \
                 scripts/ceph/install.sh && scripts/ceph/cluster.sh up /tmp/ceph-haina && \
                 source <(scripts/ceph/cluster.sh env /tmp/ceph-haina)\nor set HAINA_SKIP_CEPH=1 to skip"
            ),
        }
    }

    /// CSI secrets as Kubernetes passes them for a Ceph StorageClass.
    pub fn secrets(&self) -> HashMap<String, String> {
        HashMap::from([
            ("userID".to_string(), self.user.clone()),
            ("userKey".to_string(), self.key.clone()),
        ])
    }

    /// A keyring-less config: credentials come with each request. Pools:
    /// `ceph` (fuse, the default), `ceph-krbd`, `ceph-nbd`, `ceph-auto`,
    /// each in the RBD namespace of its own name.
    pub fn config(&self) -> String {
        self.config_with(None)
    }

    /// [`Ceph::config`] with `user` + `keyring` on every pool (for the calls
    /// whose CSI request carries no secrets).
    pub fn config_with(&self, keyring: Option<&Path>) -> String {
        let mut s = String::from("default_pool = \"ceph\"\n");
        for (name, mounter) in [
            ("ceph", "fuse"),
            ("ceph-krbd", "krbd"),
            ("ceph-nbd", "nbd"),
            ("ceph-auto", "auto"),
        ] {
            s += &format!(
                "[pools.{name}]\nkind = \"rbd\"\nmonitors = [\"{}\"]\nrados_pool = \"{}\"\nmounter = \"{mounter}\"\n",
                self.mon, self.pool
            );
            if let Some(k) = keyring {
                s += &format!("user = \"{}\"\nkeyring = \"{}\"\n", self.user, k.display());
            }
        }
        s
    }

    /// One fuse RBD pool `name` in RBD namespace `namespace`, with `user` +
    /// `keyring` when given, and `extra` TOML lines (e.g. the node
    /// registry's settings).
    pub fn pool_config(
        &self,
        name: &str,
        namespace: &str,
        keyring: Option<&Path>,
        extra: &str,
    ) -> String {
        let mut s = format!(
            "default_pool = \"{name}\"\n[pools.{name}]\nkind = \"rbd\"\nmonitors = [\"{}\"]\n\
             rados_pool = \"{}\"\nnamespace = \"{namespace}\"\nmounter = \"fuse\"\n",
            self.mon, self.pool
        );
        if let Some(k) = keyring {
            s += &format!("user = \"{}\"\nkeyring = \"{}\"\n", self.user, k.display());
        }
        s + extra
    }

    /// The node registry of RBD namespace `ns`: node ID → entry (JSON);
    /// empty when no node ever registered there.
    pub fn registry(&self, ns: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        match self.connect_ns(ns).omap_list("haina.nodes") {
            Ok(all) => all
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_slice(&v).expect("registry entry JSON")))
                .collect(),
            Err(e) if e.is_not_found() => Default::default(),
            Err(e) => panic!("reading the node registry of {ns:?}: {e}"),
        }
    }

    /// A keyring file for the test user, written into `dir`.
    pub fn write_keyring(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ceph.keyring");
        std::fs::write(
            &p,
            format!("[client.{}]\n\tkey = {}\n", self.user, self.key),
        )
        .unwrap();
        p
    }

    /// Another cephx user of the test cluster (made with the admin keyring
    /// from HAINA_CEPH_ADMIN_KEYRING if absent) with `osd_caps`; its key.
    pub fn user(&self, name: &str, osd_caps: &str) -> String {
        let admin = std::env::var("HAINA_CEPH_ADMIN_KEYRING")
            .expect("HAINA_CEPH_ADMIN_KEYRING (from `scripts/ceph/cluster.sh env DIR`)");
        let out = Command::new("timeout")
            .args([
                "30",
                "ceph",
                "-c",
                "/dev/null",
                "-m",
                &self.mon,
                "-n",
                "client.admin",
                "-k",
            ])
            .arg(&admin)
            .args(["auth", "get-or-create", &format!("client.{name}")])
            .args(["mon", "profile rbd", "osd", osd_caps])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ceph auth get-or-create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("key = ").map(str::to_string))
            .unwrap_or_else(|| panic!("no key in {text:?}"))
    }

    /// The RBD namespace of the harness's default haina pool `ceph`.
    pub fn connect(&self) -> haina_rbd::IoCtx {
        self.connect_ns("ceph")
    }

    /// The RBD namespace `ns` of the test pool (`""`: the default one).
    pub fn connect_ns(&self, ns: &str) -> haina_rbd::IoCtx {
        let opts = haina_rbd::ConnectOpts::new(
            self.mon.clone(),
            self.user.clone(),
            haina_rbd::Secret::new(self.key.clone()),
        );
        haina_rbd::Cluster::connect(&opts)
            .unwrap()
            .ioctx_in(&self.pool, ns)
            .unwrap()
    }

    /// Images whose name contains `needle`, in the namespace of pool `ceph`.
    pub fn images_with(&self, needle: &str) -> Vec<String> {
        self.images_in("ceph", needle)
    }

    /// Images of namespace `ns` whose name contains `needle` (none if the
    /// namespace does not exist yet).
    pub fn images_in(&self, ns: &str, needle: &str) -> Vec<String> {
        match self.connect_ns(ns).list_images() {
            Ok(names) => names.into_iter().filter(|n| n.contains(needle)).collect(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => panic!("listing images of namespace {ns:?}: {e}"),
        }
    }
}

/// Which config a [`Plugin`] starts with.
pub enum PluginConfig {
    Secrets,
    Keyring,
    Text(String),
}

/// One `haina serve` process with an RBD config.
pub struct Plugin {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub node_id: String,
    pub log: PathBuf,
    services: String,
    /// Extra environment for the process (e.g. `HAINA_FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// A command the process runs under (e.g. `unshare -m`), if any.
    pub wrap: Vec<String>,
    child: Option<Child>,
}

impl Plugin {
    /// Starts `haina serve --services SERVICES` (e.g. "controller,node").
    pub async fn start(ceph: &Ceph, services: &str) -> Plugin {
        Self::start_with_env(ceph, services, &[]).await
    }

    /// [`Plugin::start`] with extra environment.
    pub async fn start_with_env(ceph: &Ceph, services: &str, env: &[(&str, &str)]) -> Plugin {
        Self::start_full(ceph, services, env, PluginConfig::Secrets).await
    }

    /// [`Plugin::start`] with `user` + `keyring` configured on every pool.
    pub async fn start_with_keyring(ceph: &Ceph, services: &str) -> Plugin {
        Self::start_full(ceph, services, &[], PluginConfig::Keyring).await
    }

    /// [`Plugin::start`] with a config of the test's own.
    pub async fn start_with_config(
        ceph: &Ceph,
        services: &str,
        env: &[(&str, &str)],
        config: &str,
    ) -> Plugin {
        Self::start_full(ceph, services, env, PluginConfig::Text(config.to_string())).await
    }

    pub async fn start_full(
        ceph: &Ceph,
        services: &str,
        env: &[(&str, &str)],
        config: PluginConfig,
    ) -> Plugin {
        let root = PathBuf::from(
            std::env::var("HAINA_TEST_DIR").unwrap_or_else(|_| "/var/tmp/haina-tests".into()),
        );
        std::fs::create_dir_all(&root).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("haina-rbd-")
            .tempdir_in(root)
            .unwrap();
        let text = match config {
            PluginConfig::Secrets => ceph.config(),
            PluginConfig::Keyring => ceph.config_with(Some(&ceph.write_keyring(dir.path()))),
            PluginConfig::Text(t) => t,
        };
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        let node_id = format!("node-{}", dir.path().file_name().unwrap().to_string_lossy());
        let mut p = Plugin {
            socket: dir.path().join("csi.sock"),
            log: dir.path().join("server.log"),
            dir,
            node_id,
            services: services.into(),
            wrap: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        p.spawn().await;
        p
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The config file the process runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// A path under this plugin's dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A name unique to this plugin's test (for volumes and snapshots).
    pub fn unique(&self, what: &str) -> String {
        let tag = self.dir.path().file_name().unwrap().to_string_lossy();
        format!(
            "{what}-{}",
            tag.trim_start_matches("haina-rbd-").to_lowercase()
        )
    }

    /// Starts (or restarts) the process on the same socket and data dir.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.wrap.split_first() {
            None => Command::new(env!("CARGO_BIN_EXE_haina")),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_haina"));
                c
            }
        };
        let child = cmd
            .args(["serve", "--endpoint"])
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", &self.node_id, "--services", &self.services])
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning haina serve");
        self.child = Some(child);
        wait_until_serving(&self.socket, self.child.as_mut().unwrap(), &self.log).await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub async fn clients(&self) -> Clients {
        connect_clients(&self.socket).await
    }

    /// `kill -9` of the plugin alone (its FUSE servers live on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to die on its own (an `abort` failpoint).
    pub fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&c),
                rustix::process::Signal::TERM,
            );
            let _ = c.wait();
        }
    }

    /// Pids of `haina rbd-fuse` servers serving under this plugin's dir.
    pub fn fuse_servers(&self) -> Vec<i32> {
        fuse_servers_under(self.dir.path())
    }

    /// Asserts the kernel holds nothing of this plugin: no mounts under its
    /// dir, no loop devices over its files, no FUSE servers.
    pub fn assert_no_leaks(&self) {
        let root = self.dir.path().to_str().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(root)).collect();
        assert!(leaked.is_empty(), "mounts leaked:\n{}", leaked.join("\n"));
        let loops = loops_under(self.dir.path());
        assert!(loops.is_empty(), "loop devices leaked: {loops:?}");
        let servers = self.fuse_servers();
        assert!(servers.is_empty(), "FUSE servers leaked: {servers:?}");
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop();
        // Best effort, so one failed test does not poison the others.
        let root = self.dir.path().to_path_buf();
        force_cleanup(&root);
        for pid in fuse_servers_under(&root) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Pids of `haina rbd-fuse` processes whose mountpoint lies under `root`.
pub fn fuse_servers_under(root: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "rbd-fuse")
            && args.iter().any(|a| a.starts_with(root.to_str().unwrap()))
        {
            out.push(pid);
        }
    }
    out
}

/// A CreateVolume request for `pool` with the cluster's secrets.
pub fn create(
    ceph: &Ceph,
    pool: &str,
    name: &str,
    bytes: i64,
    cap: csi::VolumeCapability,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        parameters: HashMap::from([("pool".to_string(), pool.to_string())]),
        secrets: ceph.secrets(),
        ..Default::default()
    }
}

/// The node-side steps of one volume on one plugin.
pub struct Mounted {
    pub id: String,
    pub staging: PathBuf,
    pub target: PathBuf,
    pub cap: csi::VolumeCapability,
}

/// ControllerPublish (on `controller`) to `node`, then NodeStage and
/// NodePublish on `node`.
pub async fn publish_and_mount(
    ceph: &Ceph,
    controller: &mut Clients,
    node: &Plugin,
    id: &str,
    cap: &csi::VolumeCapability,
    tag: &str,
) -> Result<Mounted, tonic::Status> {
    let ctx = controller
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.node_id.clone(),
            volume_capability: Some(cap.clone()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .publish_context;
    mount_on(ceph, node, id, cap, tag, ctx).await
}

/// NodeStage + NodePublish on `node`.
pub async fn mount_on(
    ceph: &Ceph,
    node: &Plugin,
    id: &str,
    cap: &csi::VolumeCapability,
    tag: &str,
    publish_context: HashMap<String, String>,
) -> Result<Mounted, tonic::Status> {
    let mut c = node.clients().await;
    let staging = node.path(&format!("staging-{tag}"));
    std::fs::create_dir_all(&staging).unwrap();
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            publish_context,
            staging_target_path: staging.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await?;
    let target = node.path(&format!("pods/{tag}/mount"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_str().unwrap().into(),
            target_path: target.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await?;
    Ok(Mounted {
        id: id.into(),
        staging,
        target,
        cap: cap.clone(),
    })
}

/// NodeUnpublish + NodeUnstage on `node`.
pub async fn unmount_on(node: &Plugin, m: &Mounted) {
    let mut c = node.clients().await;
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: m.id.clone(),
            target_path: m.target.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: m.id.clone(),
            staging_target_path: m.staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
}

pub async fn unpublish(ceph: &Ceph, controller: &mut Clients, id: &str, node: &str) {
    controller
        .controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
}

pub async fn delete(ceph: &Ceph, controller: &mut Clients, id: &str) {
    controller
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
}

pub fn ext4() -> csi::VolumeCapability {
    crate::common::mount_cap("ext4", Mode::SingleNodeWriter)
}

/// A name unique to this test process and call (for namespaces).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `haina ctl nodes --config CONFIG ARGS...`.
pub fn ctl_nodes(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_haina"))
        .args(["ctl", "nodes", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("running haina ctl nodes")
}

/// [`mount_on`] with the request's secrets given (e.g. the Ceph
/// credentials plus an encryption passphrase, or without one).
pub async fn mount_on_with(
    node: &Plugin,
    id: &str,
    cap: &csi::VolumeCapability,
    tag: &str,
    publish_context: HashMap<String, String>,
    secrets: HashMap<String, String>,
) -> Result<Mounted, tonic::Status> {
    let mut c = node.clients().await;
    let staging = node.path(&format!("staging-{tag}"));
    std::fs::create_dir_all(&staging).unwrap();
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            publish_context,
            staging_target_path: staging.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            secrets,
            ..Default::default()
        })
        .await?;
    let target = node.path(&format!("pods/{tag}/mount"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_str().unwrap().into(),
            target_path: target.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
    Ok(Mounted {
        id: id.into(),
        staging,
        target,
        cap: cap.clone(),
    })
}

impl Ceph {
    /// The raw bytes of image `image` of pool `ceph`'s namespace, read
    /// without loading any encryption: what its RADOS objects hold.
    pub fn raw_image(&self, image: &str) -> Vec<u8> {
        let img = self.connect().open_read_only(image).unwrap();
        let mut buf = vec![0u8; img.size().unwrap() as usize];
        let n = img.read_at(0, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// An image's metadata value (pool `ceph`'s namespace).
    pub fn image_meta(&self, image: &str, key: &str) -> Option<String> {
        let img = self.connect().open_read_only(image).unwrap();
        img.metadata_get(key).unwrap()
    }
}
