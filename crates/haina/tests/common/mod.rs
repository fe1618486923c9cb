//! Test harness: a real `haina serve` process on a socket in a temp dir,
//! real gRPC clients, and leak checks against the kernel's view.
//!
//! Tests run as root (CI is root): they create real loop devices, real
//! filesystems and real mounts, each under its own temp dir, so they can
//! run in parallel.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haina_csi::endpoint::Endpoint;
use haina_csi::v1 as csi;
use haina_csi::v1::controller_client::ControllerClient;
use haina_csi::v1::group_controller_client::GroupControllerClient;
use haina_csi::v1::identity_client::IdentityClient;
use haina_csi::v1::node_client::NodeClient;
use tonic::transport::Channel;

pub use csi::volume_capability::access_mode::Mode;

pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub node_id: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
    config: Option<PathBuf>,
    pub log: PathBuf,
}

pub struct Clients {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub group: GroupControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra environment (e.g. `HAINA_FAILPOINTS`).
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_full(env, None).await
    }

    /// Starts a server with a pool config (TOML text) written into its dir.
    pub async fn start_with_config(env: &[(&str, &str)], config: &str) -> Self {
        Self::start_full(env, Some(config)).await
    }

    async fn start_full(env: &[(&str, &str)], config: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("haina-test-")
            .tempdir_in(test_root())
            .unwrap();
        let socket = dir.path().join("csi.sock");
        let log = dir.path().join("server.log");
        let node_id = format!("node-{}", dir.path().file_name().unwrap().to_string_lossy());
        let mut s = Server {
            dir,
            socket,
            node_id,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config: None,
            log,
        };
        if let Some(text) = config {
            let p = s.dir.path().join("config.toml");
            std::fs::write(&p, text).unwrap();
            s.config = Some(p);
        }
        s.spawn().await;
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (or restarts) the server process with the same data dir.
    pub async fn spawn(&mut self) {
        self.spawn_with_env(self.env.clone()).await
    }

    pub async fn spawn_with_env(&mut self, env: Vec<(String, String)>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_haina"));
        cmd.args(["serve", "--endpoint"])
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", &self.node_id, "--data-dir"])
            .arg(self.data_dir());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .envs(env)
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

    pub async fn clients(&self) -> Clients {
        connect_clients(&self.socket).await
    }

    /// `kill -9`: no cleanup of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the server to die on its own (e.g. an `abort` failpoint).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("no server running");
        c.wait().unwrap()
    }

    /// SIGTERM, and the exit status of a graceful shutdown.
    pub fn stop_status(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.take()?;
        self.child = Some(c);
        let c = self.child.as_mut().unwrap();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(c),
            rustix::process::Signal::TERM,
        );
        let status = c.wait().ok();
        self.child = None;
        status
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

    /// A path under this test's dir (for staging and target paths).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Asserts the kernel holds nothing of this test: no mounts under its
    /// dir, no loop devices over its files, and no images left in the pool.
    pub fn assert_no_leaks(&self) {
        let root = self.dir.path();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(root.to_str().unwrap()))
            .collect();
        assert!(leaked.is_empty(), "mounts leaked:\n{}", leaked.join("\n"));
        let loops = loops_under(root);
        assert!(loops.is_empty(), "loop devices leaked: {loops:?}");
        let images = files_with_ext(&self.data_dir(), "img");
        assert!(images.is_empty(), "image files leaked: {images:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        // Best-effort cleanup so one failed test does not poison others.
        force_cleanup(self.dir.path());
    }
}

/// Waits until `haina serve` answers Probe on `socket`; panics with its
/// log if it exits or takes more than 20 s.
pub async fn wait_until_serving(socket: &Path, child: &mut Child, log: &Path) {
    let logs = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Endpoint::parse(socket.to_str().unwrap())
            .unwrap()
            .connect()
            .await
            && IdentityClient::new(ch)
                .probe(csi::ProbeRequest {})
                .await
                .is_ok()
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("haina serve exited with {status}:\n{}", logs());
        }
        assert!(
            Instant::now() < deadline,
            "server did not come up:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Identity, Controller, GroupController and Node clients on one channel to `socket`.
pub async fn connect_clients(socket: &Path) -> Clients {
    let ch = Endpoint::parse(socket.to_str().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        identity: IdentityClient::new(ch.clone()),
        controller: ControllerClient::new(ch.clone()),
        group: GroupControllerClient::new(ch.clone()),
        node: NodeClient::new(ch),
    }
}

/// Mount points under `root`, deepest (most recent) first.
pub fn mounts_under(root: &Path) -> Vec<String> {
    typed_mounts_under(root)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// [`mounts_under`], each with its filesystem type.
fn typed_mounts_under(root: &Path) -> Vec<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<(String, String)> = mounts
        .lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let fs_type = l.split(" - ").nth(1)?.split(' ').next()?;
            Some((point.to_string(), fs_type.to_string()))
        })
        .filter(|(p, _)| p.starts_with(root.to_str().unwrap()))
        .collect();
    points.reverse();
    points
}

/// Lazily unmounts everything under `root` and detaches its loop devices.
/// The loop devices are looked up first: one over a FUSE-served file under
/// `root` shows as `/image` once that FUSE mount is gone, and nothing could
/// find it then. A filesystem a failed test left frozen is thawed first:
/// unmounted frozen, its superblock would hold the device forever.
pub fn force_cleanup(root: &Path) {
    let loops = loops_under(root);
    for (p, fs_type) in typed_mounts_under(root) {
        // (Never a FUSE mount: opening it would wait on its server.)
        if fs_type == "ext4" || fs_type == "xfs" {
            let _ = haina_sys::fs::thaw(Path::new(&p));
        }
        let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
    for (dev, _) in loops {
        detach_loop(&dev);
    }
}

/// Detaches `/dev/loopN` with our own ioctl: util-linux's `losetup` and
/// `mount -o loop` query every loop device, and one over a stalled FUSE
/// server (the stall tests make those) would hang them.
pub fn detach_loop(dev: &str) {
    if let Some(d) = haina_sys::loopdev::LoopDevice::from_path(Path::new(dev)) {
        let _ = haina_sys::loopdev::detach(&d);
    }
}

/// Attaches `image` to a free loop device (our ioctls, see [`detach_loop`]).
pub fn attach_loop(image: &Path) -> String {
    let opts = haina_sys::loopdev::AttachOptions::default();
    haina_sys::loopdev::attach(image, &opts)
        .unwrap()
        .path()
        .display()
        .to_string()
}

fn test_root() -> PathBuf {
    let p = std::env::var_os("HAINA_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/haina-tests"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Loop devices whose backing file lies under `root`.
pub fn loops_under(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && b.trim().starts_with(root.to_str().unwrap())
        {
            out.push((format!("/dev/{name}"), b.trim().to_string()));
        }
    }
    out
}

pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_ext(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out
}

pub fn mount_cap(fs: &str, mode: Mode) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap(mode: Mode) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume};
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn create_req(name: &str, bytes: i64, cap: csi::VolumeCapability) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}

pub fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Asserts a gRPC call failed with `code`; returns the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
) -> String {
    match r {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "message: {}", s.message());
            s.message().to_string()
        }
    }
}

pub fn is_mount_point(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// Stages and publishes `id` under `<server dir>/<tag>/{staging,pod/mount}`
/// and returns the published path.
pub async fn mount_volume(
    c: &mut Clients,
    server: &Server,
    id: &str,
    cap: &csi::VolumeCapability,
    tag: &str,
) -> PathBuf {
    let staging = server.path(&format!("{tag}/staging"));
    std::fs::create_dir_all(&staging).unwrap();
    let target = server.path(&format!("{tag}/pod/mount"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("stage {id}: {e}\n{}", server.logs()));
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_str().unwrap().into(),
            target_path: target.to_str().unwrap().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("publish {id}: {e}"));
    target
}

/// Reverses [`mount_volume`].
pub async fn unmount_volume(c: &mut Clients, server: &Server, id: &str, tag: &str) {
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: server
                .path(&format!("{tag}/pod/mount"))
                .to_str()
                .unwrap()
                .into(),
        })
        .await
        .unwrap();
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: server
                .path(&format!("{tag}/staging"))
                .to_str()
                .unwrap()
                .into(),
        })
        .await
        .unwrap();
}

/// DeleteVolume, which must succeed.
pub async fn delete_volume(c: &mut Clients, id: &str) {
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("delete {id}: {e}"));
}

pub fn write_synced(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

/// A scratch filesystem on its own loop device (e.g. xfs with reflink=1 to
/// host a pool), unmounted and detached on drop.
pub struct ScratchFs {
    pub dir: tempfile::TempDir,
    pub mount: PathBuf,
}

impl ScratchFs {
    pub fn new(size_mib: u64, mkfs: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("haina-scratch-")
            .tempdir_in(test_root())
            .unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let ok = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&img)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "{mkfs:?} failed");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let dev = attach_loop(&img);
        let fs_type = mkfs[0].strip_prefix("mkfs.").unwrap_or("ext4");
        rustix::mount::mount(
            dev.as_str(),
            &mount,
            fs_type,
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap_or_else(|e| panic!("mounting the scratch fs from {dev}: {e}"));
        Self { dir, mount }
    }

    /// Free bytes on the scratch filesystem.
    pub fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.mount).unwrap();
        st.f_bfree * st.f_frsize
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        for (dev, _) in loops_under(&self.mount) {
            detach_loop(&dev);
        }
        let _ = rustix::mount::unmount(&self.mount, rustix::mount::UnmountFlags::empty());
        for (dev, _) in loops_under(self.dir.path()) {
            detach_loop(&dev);
        }
    }
}
