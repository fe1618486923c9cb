//! `haina demo`: the seed's 7-step Kubernetes flow, for real, on this
//! machine, then the seed's mount chain as measured, then a full teardown.
//!
//! The demo plays every Kubernetes part against a real `haina serve`
//! (controller and node, a child process on a socket in a temp dir, with
//! the embedded local pool unless `--config`/`--pool` name another, with
//! `--secrets-file` as the StorageClass's secrets, never printed): the
//! API server (PVC, PV, Pod and VolumeAttachment records, as JSON files),
//! the external-provisioner, the PV controller, the scheduler, the
//! AttachDetach controller, the external-attacher and kubelet, which uses
//! its real path layout under a temp kubelet root. Every RPC is the one the
//! sidecar or kubelet makes, timed. A "container" ([`container`]) then
//! writes and reads through `/data`, and the chain container → pod path →
//! filesystem → device → image is printed as read from mountinfo and sysfs
//! ([`measure`]).
//!
//! Teardown ([`teardown`]) runs in reverse (NodeUnpublish, NodeUnstage,
//! ControllerUnpublish, DeleteVolume), stops the server, checks that no
//! mount, loop device or file is left, and removes the temp dir. SIGINT at
//! any point cancels the flow at the next step (an RPC in flight is allowed
//! to finish, so its effect is known) and runs the same teardown; the exit
//! code is then 130. Children run in their own process groups, so a Ctrl-C
//! at the terminal reaches the demo alone.

mod container;
mod k8s;
mod measure;
mod teardown;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use haina_csi::endpoint::Endpoint;
use haina_csi::v1 as csi;
use haina_csi::v1::controller_client::ControllerClient;
use haina_csi::v1::identity_client::IdentityClient;
use haina_csi::v1::node_client::NodeClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::ctl::code_name;
use super::ctl::render::{human_bytes, rfc3339};
use container::Container;
use measure::print_chain;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The volume's filesystem.
    #[arg(long, value_enum, default_value = "ext4")]
    fs: Fs,
    /// The volume's size (the claim's request), e.g. 1Gi or 512Mi.
    #[arg(long, default_value = "1Gi", value_parser = super::ctl::parse_size)]
    size: u64,
    /// A raw block volume (volumeMode: Block) instead of a filesystem.
    #[arg(long)]
    block: bool,
    /// The pool to provision from (the StorageClass's `pool` parameter).
    #[arg(long)]
    pool: Option<String>,
    /// Pool config (TOML) for the driver, e.g. a Ceph pool.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The StorageClass's secrets (a JSON object, or key=value lines), passed
    /// to every call the sidecars and kubelet pass secrets to. Never printed.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
    /// Where to create the demo's temp dir.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Keep the temp dir (records, logs) after the teardown.
    #[arg(long)]
    keep_temp: bool,
    /// The node's ID (default: the hostname).
    #[arg(long)]
    node_id: Option<String>,
    /// Pause at this point until a line arrives on stdin (tests, debugging).
    #[arg(long, value_enum, hide = true)]
    pause_at: Vec<Pause>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Fs {
    Ext4,
    Xfs,
}

impl Fs {
    fn as_str(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }
}

/// Where `--pause-at` can stop the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Pause {
    /// After CreateVolume.
    CreateVolume,
    /// After NodeStageVolume.
    NodeStage,
    /// While the container runs, before the chain is measured.
    Container,
    /// After the chain is printed, the container still running.
    Chain,
}

/// Why the flow stopped early.
enum Stop {
    Interrupted,
    Failed(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Self {
        Stop::Failed(s)
    }
}

/// The SIGINT latch: set once, observed between steps.
#[derive(Clone)]
struct Cancel {
    rx: watch::Receiver<bool>,
}

impl Cancel {
    /// Registers the SIGINT handler now (before any child exists).
    fn install() -> std::io::Result<Self> {
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut first = true;
            while sig.recv().await.is_some() {
                if first {
                    println!(
                        "\n  ^C  interrupted: tearing down what was set up (the call in flight finishes first)"
                    );
                    let _ = tx.send(true);
                    first = false;
                } else {
                    println!(
                        "  ^C  teardown in progress; it ends on its own, leaving nothing behind"
                    );
                }
            }
        });
        Ok(Self { rx })
    }

    fn is_set(&self) -> bool {
        *self.rx.borrow()
    }

    fn check(&self) -> Result<(), Stop> {
        if self.is_set() {
            Err(Stop::Interrupted)
        } else {
            Ok(())
        }
    }

    async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Column layout: ` 7  kubelet                  NodeStageVolume ...`.
const INDENT: &str = "                              ";

fn row(num: impl Display, actor: &str, text: impl Display) {
    println!("{:>3}  {actor:<24} {text}", num.to_string());
}

fn more(text: impl Display) {
    println!("{INDENT}{text}");
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rpc_text(name: &str, d: Duration) -> String {
    format!("{name:<27}{:>11}", ms(d))
}

/// A retryable RPC for [`call`]: clones the client and the request per attempt.
macro_rules! rpc {
    ($client:expr, $method:ident, $req:expr) => {{
        let client = $client.clone();
        let req = $req.clone();
        move || {
            let mut client = client.clone();
            let req = req.clone();
            async move { client.$method(req).await }
        }
    }};
}
use rpc;

const RPC_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs one RPC, retrying ABORTED/UNAVAILABLE (the plugin is busy with the
/// same volume, or restarting) for up to a minute; returns it and its
/// latency.
async fn call<T, F, Fut>(name: &str, mut f: F) -> Result<(T, Duration), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        let attempt = Instant::now();
        match tokio::time::timeout(RPC_TIMEOUT, f()).await {
            Ok(Ok(r)) => return Ok((r.into_inner(), attempt.elapsed())),
            Ok(Err(s))
                if matches!(s.code(), tonic::Code::Aborted | tonic::Code::Unavailable)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(s)) => {
                return Err(format!(
                    "{name} failed: {} {}",
                    code_name(s.code()),
                    s.message()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{name}: no answer within {}s",
                    RPC_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

struct Server {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

#[derive(Clone)]
struct Clients {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

/// What the flow has done so far: what the teardown must undo.
#[derive(Default)]
struct Done {
    volume: Option<csi::Volume>,
    controller_publish: bool,
    stage: bool,
    publish: bool,
}

struct Demo {
    args: Args,
    cancel: Cancel,
    work: PathBuf,
    kubelet: PathBuf,
    records: PathBuf,
    names: k8s::Names,
    node: String,
    cap: csi::VolumeCapability,
    secrets: HashMap<String, String>,
    server: Option<Server>,
    clients: Option<Clients>,
    paths: Option<k8s::KubeletPaths>,
    attachment: String,
    publish_context: HashMap<String, String>,
    done: Done,
    container: Option<Container>,
    /// The backing image, as measured (for the final leak check).
    image: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let cancel = Cancel::install()?;
    let mut demo = Demo::new(args, cancel)?;
    let outcome = demo.up().await;
    let mut failures = Vec::new();
    let interrupted = match outcome {
        Ok(()) => false,
        Err(Stop::Interrupted) => true,
        Err(Stop::Failed(m)) => {
            println!("\n  FAILED: {m}");
            failures.push(m);
            false
        }
    };
    failures.extend(demo.down().await);
    println!();
    match (interrupted, failures.is_empty()) {
        (false, true) => {
            println!(
                "Done: the volume went up the seed's 7 steps, served a container, and came back down; nothing was left behind."
            );
            Ok(())
        }
        (true, true) => {
            println!(
                "Interrupted; everything that was set up was torn down, nothing was left behind."
            );
            std::process::exit(130);
        }
        (_, false) => {
            println!("FAILED:");
            for f in &failures {
                println!("  - {f}");
            }
            Err(format!("demo failed ({} problem(s), listed above)", failures.len()).into())
        }
    }
}

impl Demo {
    fn new(args: Args, cancel: Cancel) -> Result<Self, String> {
        // Bad input is refused before anything is created.
        let secrets = match &args.secrets_file {
            Some(f) => super::ctl::load_secrets(f)?,
            None => HashMap::new(),
        };
        std::fs::create_dir_all(&args.work_dir)
            .map_err(|e| format!("creating {}: {e}", args.work_dir.display()))?;
        let base = std::fs::canonicalize(&args.work_dir)
            .map_err(|e| format!("{}: {e}", args.work_dir.display()))?;
        let work = base.join(format!(
            "haina-demo-{}-{}",
            std::process::id(),
            &k8s::uuid()[..8]
        ));
        std::fs::create_dir(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
        let sock = work.join("csi.sock");
        if sock.as_os_str().len() > 100 {
            let _ = std::fs::remove_dir(&work);
            return Err(format!(
                "{} is too long for a unix socket path; use a shorter --work-dir",
                sock.display()
            ));
        }
        let node = match &args.node_id {
            Some(n) => n.clone(),
            None => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        };
        let cap = {
            use csi::volume_capability::access_mode::Mode;
            use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
            csi::VolumeCapability {
                access_type: Some(if args.block {
                    AccessType::Block(BlockVolume {})
                } else {
                    AccessType::Mount(MountVolume {
                        fs_type: args.fs.as_str().into(),
                        ..Default::default()
                    })
                }),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
            }
        };
        Ok(Self {
            kubelet: work.join("kubelet"),
            secrets,
            records: work.join("k8s"),
            work,
            names: k8s::Names::new(),
            node,
            cap,
            cancel,
            args,
            server: None,
            clients: None,
            paths: None,
            attachment: String::new(),
            publish_context: HashMap::new(),
            done: Done::default(),
            container: None,
            image: None,
        })
    }

    fn record(&self, file: &str, v: &serde_json::Value) -> Result<String, String> {
        std::fs::create_dir_all(&self.records)
            .map_err(|e| format!("creating {}: {e}", self.records.display()))?;
        let p = self.records.join(file);
        let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
        Ok(format!("k8s/{file}"))
    }

    fn forget(&self, file: &str) {
        let _ = std::fs::remove_file(self.records.join(file));
    }

    fn clients(&self) -> Clients {
        self.clients
            .clone()
            .expect("the flow starts the server first")
    }

    /// Waits for a line on stdin at a `--pause-at` point (or for SIGINT).
    async fn pause(&self, at: Pause) -> Result<(), Stop> {
        if !self.args.pause_at.contains(&at) {
            return self.cancel.check();
        }
        println!("[paused at {at:?}: press Enter to go on, Ctrl-C to tear down]");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A plain thread: a blocked read must not hold up the runtime's exit.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        tokio::select! {
            _ = rx => self.cancel.check(),
            _ = self.cancel.wait() => Err(Stop::Interrupted),
        }
    }

    async fn up(&mut self) -> Result<(), Stop> {
        println!("haina demo: the seed's 7 steps, run for real on this machine\n");
        println!(
            "  work dir   {}{}",
            self.work.display(),
            if self.args.keep_temp {
                " (kept)"
            } else {
                " (removed at the end)"
            }
        );
        self.start_server().await?;
        let c = self.clients();

        let (info, dt) = call(
            "GetPluginInfo",
            rpc!(c.identity, get_plugin_info, csi::GetPluginInfoRequest {}),
        )
        .await?;
        println!(
            "  kubelet    {} (kubelet's own path layout)",
            self.kubelet.display()
        );
        println!("  node       {}", self.node);
        println!();
        row(
            "",
            "node-driver-registrar",
            format!(
                "{}  {} {}",
                rpc_text("GetPluginInfo", dt),
                info.name,
                info.vendor_version
            ),
        );
        self.cancel.check()?;

        let vol = self.provision(&c).await?;
        self.schedule(&c, &vol).await?;
        self.attach(&c, &vol).await?;
        let paths = self.kubelet(&c, &vol).await?;
        self.run_container(&paths).await?;
        let measured = self.measure()?;
        self.image = measured.image.clone();
        print_chain(&measured);
        self.pause(Pause::Chain).await
    }

    /// Steps 1-3: the claim, CreateVolume and the PV, the binding.
    async fn provision(&mut self, c: &Clients) -> Result<csi::Volume, Stop> {
        // 1. The claim.
        let size = self.args.size;
        let file = self.record(
            "pvc.json",
            &k8s::claim(&self.names, size, self.args.block, false),
        )?;
        row(
            1,
            "kube-apiserver",
            format!(
                "PVC {}/{} created: {}, ReadWriteOnce, {}",
                k8s::NAMESPACE,
                k8s::CLAIM,
                k8s::quantity(size),
                if self.args.block {
                    "Block".to_string()
                } else {
                    format!("Filesystem ({})", self.args.fs.as_str())
                }
            ),
        );
        more(file);
        self.cancel.check()?;

        // 2. external-provisioner: CreateVolume, then the PV.
        let mut parameters: HashMap<String, String> = [
            ("csi.storage.k8s.io/pv/name", self.names.pv.as_str()),
            ("csi.storage.k8s.io/pvc/name", k8s::CLAIM),
            ("csi.storage.k8s.io/pvc/namespace", k8s::NAMESPACE),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(p) = &self.args.pool {
            parameters.insert("pool".into(), p.clone());
        }
        let req = csi::CreateVolumeRequest {
            name: self.names.pv.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: size as i64,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![self.cap.clone()],
            parameters,
            secrets: self.secrets.clone(),
            ..Default::default()
        };
        let (resp, dt) = call("CreateVolume", rpc!(c.controller, create_volume, req)).await?;
        let vol = resp
            .volume
            .ok_or_else(|| Stop::Failed("CreateVolume returned no volume".into()))?;
        self.done.volume = Some(vol.clone());
        let topology = topology_of(&vol);
        row(2, "external-provisioner", rpc_text("CreateVolume", dt));
        more(format!(
            "-> volume {}, {}{}",
            vol.volume_id,
            human_bytes(vol.capacity_bytes as u64),
            if topology.is_empty() {
                ", reachable from every node".to_string()
            } else {
                format!(", reachable from {}", segments(&topology))
            }
        ));
        let pv = |bound| {
            k8s::volume(
                &self.names,
                &k8s::PvSpec {
                    handle: &vol.volume_id,
                    capacity: vol.capacity_bytes as u64,
                    fs_type: self.args.fs.as_str(),
                    block: self.args.block,
                    volume_attributes: &vol.volume_context,
                    topology: &topology,
                },
                bound,
            )
        };
        let file = self.record("pv.json", &pv(false))?;
        more(format!("PV {} created: {file}", self.names.pv));
        self.pause(Pause::CreateVolume).await?;

        // 3. The PV controller binds claim and volume.
        self.record(
            "pvc.json",
            &k8s::claim(&self.names, size, self.args.block, true),
        )?;
        self.record("pv.json", &pv(true))?;
        row(
            3,
            "PV controller",
            format!(
                "PVC {}/{} bound to PV {}",
                k8s::NAMESPACE,
                k8s::CLAIM,
                self.names.pv
            ),
        );
        self.cancel.check()?;
        Ok(vol)
    }

    /// Step 4: the scheduler places the pod where the PV is reachable.
    async fn schedule(&mut self, c: &Clients, vol: &csi::Volume) -> Result<(), Stop> {
        // 4. The scheduler: the PV's node affinity against the node's topology.
        let topology = topology_of(vol);
        self.record("pod.json", &k8s::pod(&self.names, None, self.args.block))?;
        let (info, dt) = call(
            "NodeGetInfo",
            rpc!(c.node, node_get_info, csi::NodeGetInfoRequest {}),
        )
        .await?;
        let mut labels: Vec<(String, String)> = info
            .accessible_topology
            .map(|t| t.segments.into_iter().collect())
            .unwrap_or_default();
        labels.sort();
        row(4, "kube-scheduler", rpc_text("NodeGetInfo", dt));
        more(format!("-> node {}, {}", info.node_id, segments(&labels)));
        let fits = topology.iter().all(|kv| labels.contains(kv));
        if !fits {
            return Err(Stop::Failed(format!(
                "the PV's node affinity ({}) does not match node {} ({}): the pod cannot be scheduled here",
                segments(&topology),
                info.node_id,
                segments(&labels)
            )));
        }
        self.node = info.node_id;
        self.record(
            "pod.json",
            &k8s::pod(&self.names, Some(&self.node), self.args.block),
        )?;
        more(format!(
            "pod {}/{} scheduled to {}: the PV's node affinity matches",
            k8s::NAMESPACE,
            k8s::POD,
            self.node
        ));
        self.cancel.check()?;
        Ok(())
    }

    /// Steps 5-6: the VolumeAttachment, and ControllerPublishVolume for it.
    async fn attach(&mut self, c: &Clients, vol: &csi::Volume) -> Result<(), Stop> {
        // 5. The AttachDetach controller wants the volume on the node.
        let handle = vol.volume_id.clone();
        self.attachment = k8s::attachment_name(&handle, &self.node);
        let file = self.record(
            "volumeattachment.json",
            &k8s::attachment(&self.attachment, &self.names, &self.node, None),
        )?;
        row(5, "AttachDetach controller", "VolumeAttachment created:");
        more(format!("{} ({file})", self.attachment));
        self.cancel.check()?;

        // 6. The external-attacher acts on it.
        let req = csi::ControllerPublishVolumeRequest {
            volume_id: handle.clone(),
            node_id: self.node.clone(),
            volume_capability: Some(self.cap.clone()),
            readonly: false,
            volume_context: vol.volume_context.clone(),
            secrets: self.secrets.clone(),
        };
        self.done.controller_publish = true;
        let (resp, dt) = call(
            "ControllerPublishVolume",
            rpc!(c.controller, controller_publish_volume, req),
        )
        .await?;
        self.publish_context = resp.publish_context;
        self.record(
            "volumeattachment.json",
            &k8s::attachment(
                &self.attachment,
                &self.names,
                &self.node,
                Some(&self.publish_context),
            ),
        )?;
        let mut ctx: Vec<(String, String)> = self.publish_context.clone().into_iter().collect();
        ctx.sort();
        row(
            6,
            "external-attacher",
            rpc_text("ControllerPublishVolume", dt),
        );
        more(format!(
            "-> publish_context {}; VolumeAttachment attached: true",
            segments(&ctx)
        ));
        self.cancel.check()?;
        Ok(())
    }

    /// Step 7: kubelet stages the volume, then publishes it into the pod.
    async fn kubelet(&mut self, c: &Clients, vol: &csi::Volume) -> Result<k8s::KubeletPaths, Stop> {
        // 7. kubelet: stage (attach, format, mount), then publish (bind).
        let handle = vol.volume_id.clone();
        let paths = k8s::kubelet_paths(&self.kubelet, &self.names, &handle, self.args.block);
        let vol_data = k8s::vol_data(&self.names, &handle, &self.node, &self.attachment);
        for d in &paths.data_dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            let text = serde_json::to_string(&vol_data).map_err(|e| e.to_string())?;
            std::fs::write(d.join("vol_data.json"), text)
                .map_err(|e| format!("writing {}/vol_data.json: {e}", d.display()))?;
        }
        for d in [Some(paths.staging.as_path()), paths.target.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        self.paths = Some(paths.clone());
        let stage = csi::NodeStageVolumeRequest {
            volume_id: handle.clone(),
            publish_context: self.publish_context.clone(),
            staging_target_path: paths.staging.display().to_string(),
            volume_capability: Some(self.cap.clone()),
            volume_context: vol.volume_context.clone(),
            secrets: self.secrets.clone(),
        };
        self.done.stage = true;
        let (_, dt) = call("NodeStageVolume", rpc!(c.node, node_stage_volume, stage)).await?;
        row(7, "kubelet", rpc_text("NodeStageVolume", dt));
        more(format!("staging  {}", paths.staging.display()));
        self.pause(Pause::NodeStage).await?;
        let publish = csi::NodePublishVolumeRequest {
            volume_id: handle.clone(),
            publish_context: self.publish_context.clone(),
            staging_target_path: paths.staging.display().to_string(),
            target_path: paths.target.display().to_string(),
            volume_capability: Some(self.cap.clone()),
            readonly: false,
            volume_context: vol.volume_context.clone(),
            secrets: self.secrets.clone(),
        };
        self.done.publish = true;
        let (_, dt) = call(
            "NodePublishVolume",
            rpc!(c.node, node_publish_volume, publish),
        )
        .await?;
        more(rpc_text("NodePublishVolume", dt));
        more(format!("target   {}", paths.target.display()));
        self.cancel.check()?;
        Ok(paths)
    }

    async fn run_container(&mut self, paths: &k8s::KubeletPaths) -> Result<(), Stop> {
        let (secs, nanos) = crate::volume::now_unix();
        let msg = format!(
            "hello from pod {}, written at {}",
            self.names.pod_uid,
            rfc3339(secs, nanos)
        );
        let ct = Container::start(
            &self.work.join("container"),
            &paths.target,
            self.args.block,
            &msg,
        )?;
        let (pid, at) = (ct.pid, ct.at);
        self.container = Some(ct);
        println!();
        row(
            "",
            "container runtime",
            format!(
                "pod {}/{} running: pid {pid} in its own mount namespace",
                k8s::NAMESPACE,
                k8s::POD
            ),
        );
        more(format!(
            "{at} is a bind mount of the pod path; its root is a tmpfs (pivot_root)"
        ));
        let report = {
            let ct = self.container.as_mut().expect("just started");
            tokio::select! {
                r = ct.report() => r?,
                _ = self.cancel.wait() => return Err(Stop::Interrupted),
            }
        };
        more(format!("wrote      {}", report.wrote));
        if report.read_back != msg {
            return Err(Stop::Failed(format!(
                "the container read back {:?}, not the {:?} it wrote",
                report.read_back, msg
            )));
        }
        more(format!("read back  {:?}", report.read_back));
        let (host_path, host) = read_host(&paths.target, self.args.block)?;
        if host != msg {
            return Err(Stop::Failed(format!(
                "through the pod path {} the host reads {host:?}, not what the container wrote",
                host_path.display()
            )));
        }
        more(format!(
            "host reads the same bytes at {}",
            host_path.display()
        ));
        for m in &report.mountinfo {
            more(format!("its mountinfo: {m}"));
        }
        self.pause(Pause::Container).await
    }

    async fn start_server(&mut self) -> Result<(), Stop> {
        let exe = std::env::current_exe().map_err(|e| format!("locating the haina binary: {e}"))?;
        let sock = self.work.join("csi.sock");
        let endpoint = format!("unix://{}", sock.display());
        let log = self.work.join("serve.log");
        let logf =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("serve")
            .arg("--endpoint")
            .arg(&endpoint)
            .arg("--node-id")
            .arg(&self.node)
            .arg("--data-dir")
            .arg(self.work.join("data"));
        if let Some(cfg) = &self.args.config {
            cmd.arg("--config").arg(cfg);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf))
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", exe.display()))?;
        let pid = child.id().unwrap_or(0);
        self.server = Some(Server {
            child,
            pid,
            log: log.clone(),
        });
        let ep = Endpoint::parse(&endpoint).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.cancel.check()?;
            if let Ok(ch) = ep.connect().await {
                let mut id = IdentityClient::new(ch.clone());
                if id.probe(csi::ProbeRequest {}).await.is_ok() {
                    self.clients = Some(Clients {
                        identity: id,
                        controller: ControllerClient::new(ch.clone()),
                        node: NodeClient::new(ch),
                    });
                    break;
                }
            }
            let server = self.server.as_mut().expect("just started");
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Stop::Failed(format!(
                    "haina serve exited with {status}: {}",
                    tail(&log)
                )));
            }
            if Instant::now() > deadline {
                return Err(Stop::Failed(format!(
                    "haina serve did not answer on {endpoint} within 30s: {}",
                    tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("  driver     haina serve (pid {pid}, controller and node) on {endpoint}");
        match (&self.args.config, &self.args.pool) {
            (None, None) => println!(
                "  pool       default: the embedded local pool (image files on loop devices) in {}",
                self.work.join("data").display()
            ),
            (cfg, pool) => println!(
                "  pool       {} from {}",
                pool.as_deref().unwrap_or("the default pool"),
                cfg.as_ref()
                    .map_or("the embedded config".into(), |c| c.display().to_string())
            ),
        }
        Ok(())
    }
}

/// A volume's first accessible topology segment set, sorted.
fn topology_of(vol: &csi::Volume) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = vol
        .accessible_topology
        .first()
        .map(|t| t.segments.clone().into_iter().collect())
        .unwrap_or_default();
    s.sort();
    s
}

/// `k=v, k2=v2`.
fn segments(kv: &[(String, String)]) -> String {
    if kv.is_empty() {
        return "(none)".into();
    }
    kv.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first line of what the container wrote, read on the host side.
fn read_host(target: &Path, block: bool) -> Result<(PathBuf, String), String> {
    use std::io::Read;
    let p = if block {
        target.to_path_buf()
    } else {
        target.join("hello.txt")
    };
    let mut buf = vec![0u8; 4096];
    let n = std::fs::File::open(&p)
        .and_then(|mut f| f.read(&mut buf))
        .map_err(|e| format!("reading {}: {e}", p.display()))?;
    buf.truncate(n);
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok((p, String::from_utf8_lossy(line).into_owned()))
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        "(its log is empty)".into()
    } else {
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}
