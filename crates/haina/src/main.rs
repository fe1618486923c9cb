//! The `haina` command: `serve` runs the CSI plugin; the other subcommands
//! drive, explain and demonstrate it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use haina::cli;
use haina::config::Config;
use haina::driver::{Driver, Services};
use haina_csi::endpoint::Endpoint;

#[derive(Parser)]
#[command(
    name = "haina",
    version,
    about = "A CSI block-storage driver: local image files and Ceph RBD"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CSI Identity, Controller and Node services on a unix socket.
    Serve(ServeArgs),
    /// Call any CSI endpoint's RPCs from the command line.
    Ctl(cli::ctl::Args),
    /// Run the seed's 7-step Kubernetes flow for real on this machine.
    Demo(cli::demo::Args),
    /// Show the live mount chain of a volume (by ID or path) on this node.
    Explain(cli::explain::Args),
    /// FlexVolume driver entry point (init, attach, mount, ...).
    Flexvolume(cli::flexvolume::Args),
    /// Benchmarks: the CSI lifecycle against the bare kernel work.
    Bench(cli::bench::Args),
    /// Internal: serve an RBD image as a file over FUSE (started by the node plugin).
    #[command(hide = true)]
    RbdFuse(cli::rbd_fuse::Args),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// CSI endpoint, unix:///path/to/csi.sock
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/haina/csi.sock"
    )]
    endpoint: String,
    /// This node's ID (default: the hostname).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// Where local pools and the driver's state live.
    #[arg(long, env = "HAINA_DATA_DIR", default_value = "/var/lib/haina")]
    data_dir: PathBuf,
    /// Pool config (TOML). Without it: one local pool named `default`.
    #[arg(long, env = "HAINA_CONFIG")]
    config: Option<PathBuf>,
    /// Services to run: controller, node, or both.
    #[arg(
        long,
        env = "HAINA_SERVICES",
        value_delimiter = ',',
        default_value = "controller,node"
    )]
    services: Vec<ServiceKind>,
    /// The most volumes this node stages at once: reported in NodeGetInfo
    /// (the scheduler's attach limit) and enforced by NodeStageVolume
    /// (RESOURCE_EXHAUSTED). 0 means no limit.
    #[arg(long, env = "HAINA_MAX_VOLUMES_PER_NODE", default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..))]
    max_volumes_per_node: i64,
    /// Serve Prometheus /metrics and /healthz on this address (e.g. 0.0.0.0:9808).
    #[arg(long, env = "HAINA_METRICS_ADDRESS")]
    metrics_address: Option<String>,
    /// `json`: one JSON object per line (one per RPC: method, id, code, ms).
    #[arg(long, env = "HAINA_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceKind {
    Controller,
    Node,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_logs(args.log_format);
    let endpoint = Endpoint::parse(&args.endpoint)?;
    let config = Config::load(args.config.as_deref())?;
    let services = Services {
        controller: args.services.contains(&ServiceKind::Controller),
        node: args.services.contains(&ServiceKind::Node),
    };
    let node_id = haina::ids::node_id(
        "--node-id",
        &args.node_id.unwrap_or_else(haina::driver::hostname),
    )?;
    let mut driver = Driver::new(&config, node_id, args.data_dir, services)?;
    driver.max_volumes_per_node = args.max_volumes_per_node;
    let driver = Arc::new(driver);
    let incoming = endpoint.bind().await?;
    let presences = match announce(&driver, services.node).await {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(endpoint.path());
            return Err(e);
        }
    };
    tracing::info!(
        endpoint = %endpoint,
        node_id = %driver.node_id,
        controller = services.controller,
        node = services.node,
        pools = ?driver.pools.keys().map(|p| p.as_str()).collect::<Vec<_>>(),
        version = env!("CARGO_PKG_VERSION"),
        "haina serving"
    );
    if let Some(addr) = &args.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--metrics-address {addr}: {e}"))?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.clone());
        tracing::info!(address = %bound, "serving /metrics and /healthz");
        tokio::spawn(haina::metrics::serve(
            listener,
            driver.clone(),
            endpoint.path().to_path_buf(),
        ));
    }
    let served = haina::server::serve(driver, incoming, shutdown_signal()).await;
    let _ = std::fs::remove_file(endpoint.path());
    // Record the stop in the pools' node registries (bounded: a hung
    // cluster leaves the node to turn stale instead).
    let _ = tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            for p in presences {
                s.spawn(move || p.stop(PRESENCE_STOP));
            }
        })
    })
    .await;
    served?;
    // Deleted RBD images still being purged in the background.
    let _ = tokio::task::spawn_blocking(|| {
        haina::backend::rbd::wait_for_purges(std::time::Duration::from_secs(10))
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// How long `serve` waits for its first node registry writes before serving.
const PRESENCE_START: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a graceful stop waits to record itself in the node registries.
const PRESENCE_STOP: std::time::Duration = std::time::Duration::from_secs(3);

/// A node plugin announces itself in every pool that keeps a node registry,
/// and waits (bounded) for the first registrations, so a ControllerPublish
/// that follows the plugin's start finds the node.
async fn announce(
    driver: &Arc<Driver>,
    node: bool,
) -> Result<Vec<Box<dyn haina::backend::Presence>>, Box<dyn std::error::Error>> {
    if !node {
        return Ok(Vec::new());
    }
    let mut presences = Vec::new();
    for pool in driver.pools.values() {
        presences.extend(pool.announce_node()?);
    }
    let presences = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PRESENCE_START;
        for p in &presences {
            p.wait_registered(deadline);
        }
        presences
    })
    .await?;
    Ok(presences)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::RbdFuse(_) = &cli.command
        && let Err(e) = cli::rbd_fuse::isolate()
    {
        // Before any thread exists: see rbd_fuse::isolate.
        eprintln!("haina rbd-fuse: moving into a private mount namespace: {e}");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve(a).await,
            Command::Ctl(a) => cli::ctl::run(a).await,
            Command::Demo(a) => cli::demo::run(a).await,
            Command::Explain(a) => cli::explain::run(a).await,
            Command::Flexvolume(a) => cli::flexvolume::run(a).await,
            Command::Bench(a) => cli::bench::run(a).await,
            Command::RbdFuse(a) => cli::rbd_fuse::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haina: {e}");
            ExitCode::FAILURE
        }
    }
}
