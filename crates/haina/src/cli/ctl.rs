//! `haina ctl`: a CSI client for any CSI endpoint, in the spirit of `csc`.
//! One subcommand is not CSI: `nodes` ([`nodes`]) reads RBD pools' node
//! registries from Ceph itself, with the pool config's credentials.
//!
//! One subcommand per Identity, Controller and Node RPC; request fields are
//! flags (`--cap mount,ext4,SINGLE_NODE_WRITER`, `--param k=v`,
//! `--secrets-file FILE`, `--requisite k=v,k2=v2`, sizes like `1Gi`). The
//! response is printed as key: value lines or a table, or as JSON with
//! `--output json` (built field by field in [`json`]).
//!
//! Exit codes are the gRPC status codes, so scripts can branch on them:
//! a failed RPC prints `ERROR <CODE_NAME>: <message>` on stderr and exits
//! with the code's number (NOT_FOUND is 5); an endpoint that cannot be
//! dialled is UNAVAILABLE (14); bad local input (an unreadable secrets
//! file, a malformed endpoint) is INVALID_ARGUMENT (3). Secrets are read
//! from a file, sent, and never printed — not even in error messages.

mod json;
mod nodes;
pub(crate) mod render;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use haina_csi::endpoint::Endpoint;
use haina_csi::v1 as csi;
use haina_csi::v1::controller_client::ControllerClient;
use haina_csi::v1::identity_client::IdentityClient;
use haina_csi::v1::node_client::NodeClient;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use render::View;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Capabilities: --cap mount,FSTYPE,MODE[,MOUNT_FLAG...] or --cap block,MODE, e.g.
  --cap mount,ext4,SINGLE_NODE_WRITER   --cap mount,,SINGLE_NODE_READER_ONLY,noatime
  --cap block,SINGLE_NODE_WRITER
Sizes: bytes, or with a suffix k M G T (powers of 1000) or Ki Mi Gi Ti (powers of 1024).
Exit code: 0, or the gRPC status code of the failed call (NOT_FOUND=5, UNAVAILABLE=14, ...).")]
pub struct Args {
    /// The plugin's endpoint, unix:///path/to/csi.sock.
    #[arg(
        long,
        global = true,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/haina/csi.sock"
    )]
    endpoint: String,
    /// How to print the response.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Output,
    /// Give up on the call after this many seconds (DEADLINE_EXCEEDED).
    #[arg(long, global = true, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Identity: GetPluginInfo.
    PluginInfo,
    /// Identity: GetPluginCapabilities.
    PluginCapabilities,
    /// Identity: Probe.
    Probe,
    /// Controller: CreateVolume.
    CreateVolume(CreateVolume),
    /// Controller: DeleteVolume.
    DeleteVolume(VolumeWithSecrets),
    /// Controller: ControllerPublishVolume.
    ControllerPublish(ControllerPublish),
    /// Controller: ControllerUnpublishVolume.
    ControllerUnpublish(ControllerUnpublish),
    /// Controller: ValidateVolumeCapabilities.
    ValidateCapabilities(Validate),
    /// Controller: ListVolumes.
    ListVolumes(Paging),
    /// Controller: GetCapacity.
    GetCapacity(GetCapacity),
    /// Controller: ControllerGetCapabilities.
    ControllerCapabilities,
    /// Controller: CreateSnapshot.
    CreateSnapshot(CreateSnapshot),
    /// Controller: DeleteSnapshot.
    DeleteSnapshot(SnapshotWithSecrets),
    /// Controller: ListSnapshots.
    ListSnapshots(ListSnapshots),
    /// Controller: GetSnapshot.
    GetSnapshot(SnapshotWithSecrets),
    /// Controller: ControllerExpandVolume.
    ExpandVolume(ExpandVolume),
    /// Controller: ControllerGetVolume.
    GetVolume(VolumeOnly),
    /// Controller: ControllerModifyVolume.
    ModifyVolume(ModifyVolume),
    /// Node: NodeStageVolume.
    NodeStage(NodeStage),
    /// Node: NodeUnstageVolume.
    NodeUnstage(NodeUnstage),
    /// Node: NodePublishVolume.
    NodePublish(NodePublish),
    /// Node: NodeUnpublishVolume.
    NodeUnpublish(NodeUnpublish),
    /// Node: NodeGetVolumeStats.
    NodeStats(NodeStats),
    /// Node: NodeExpandVolume.
    NodeExpand(NodeExpand),
    /// Node: NodeGetCapabilities.
    NodeCapabilities,
    /// Node: NodeGetInfo.
    NodeInfo,
    /// Not CSI: the nodes of RBD pools from their node registry in Ceph,
    /// with their state and volumes (reads with the config's keyring).
    Nodes(nodes::Args),
}

/// `--secrets-file FILE`: a JSON object of strings, or `key=value` lines.
#[derive(clap::Args, Debug, Default)]
struct Secrets {
    /// Secrets for the call: a JSON object, or key=value lines. Never printed.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CreateVolume {
    /// The volume's name (Kubernetes passes the PV name, e.g. pvc-<uid>).
    name: String,
    /// required_bytes, e.g. 1Gi.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// limit_bytes, e.g. 2Gi.
    #[arg(long, value_parser = parse_size)]
    limit: Option<u64>,
    /// A volume capability (repeatable); default mount,,SINGLE_NODE_WRITER.
    #[arg(long = "cap", value_parser = parse_cap)]
    caps: Vec<csi::VolumeCapability>,
    /// A StorageClass parameter (repeatable), e.g. --param pool=fast.
    #[arg(long = "param", value_parser = parse_kv, value_name = "K=V")]
    params: Vec<(String, String)>,
    /// A mutable parameter (repeatable).
    #[arg(long = "mutable-param", value_parser = parse_kv, value_name = "K=V")]
    mutable_params: Vec<(String, String)>,
    /// A required topology segment set, k=v[,k2=v2] (repeatable).
    #[arg(long, value_parser = parse_segments, value_name = "K=V,...")]
    requisite: Vec<BTreeMap<String, String>>,
    /// A preferred topology segment set, k=v[,k2=v2] (repeatable, in order).
    #[arg(long, value_parser = parse_segments, value_name = "K=V,...")]
    preferred: Vec<BTreeMap<String, String>>,
    /// Create from this snapshot.
    #[arg(long, value_name = "SNAPSHOT_ID", conflicts_with = "from_volume")]
    from_snapshot: Option<String>,
    /// Clone this volume.
    #[arg(long, value_name = "VOLUME_ID")]
    from_volume: Option<String>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct VolumeOnly {
    volume_id: String,
}

#[derive(clap::Args, Debug)]
struct VolumeWithSecrets {
    volume_id: String,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct SnapshotWithSecrets {
    snapshot_id: String,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct ControllerPublish {
    volume_id: String,
    #[arg(long)]
    node_id: String,
    /// The volume capability; default mount,,SINGLE_NODE_WRITER.
    #[arg(long = "cap", value_parser = parse_cap)]
    cap: Option<csi::VolumeCapability>,
    #[arg(long)]
    readonly: bool,
    /// volume_context entry (repeatable), as CreateVolume returned it.
    #[arg(long = "volume-context", value_parser = parse_kv, value_name = "K=V")]
    volume_context: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct ControllerUnpublish {
    volume_id: String,
    /// The node to unpublish from; empty means every node.
    #[arg(long, default_value = "")]
    node_id: String,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct Validate {
    volume_id: String,
    /// A capability to validate (repeatable); default mount,,SINGLE_NODE_WRITER.
    #[arg(long = "cap", value_parser = parse_cap)]
    caps: Vec<csi::VolumeCapability>,
    #[arg(long = "volume-context", value_parser = parse_kv, value_name = "K=V")]
    volume_context: Vec<(String, String)>,
    #[arg(long = "param", value_parser = parse_kv, value_name = "K=V")]
    params: Vec<(String, String)>,
    #[arg(long = "mutable-param", value_parser = parse_kv, value_name = "K=V")]
    mutable_params: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct Paging {
    /// At most this many entries (0: the plugin decides).
    #[arg(long, default_value_t = 0)]
    max_entries: i32,
    /// The next_token of a previous page.
    #[arg(long, default_value = "")]
    starting_token: String,
}

#[derive(clap::Args, Debug)]
struct GetCapacity {
    /// Capabilities the capacity is for (repeatable).
    #[arg(long = "cap", value_parser = parse_cap)]
    caps: Vec<csi::VolumeCapability>,
    #[arg(long = "param", value_parser = parse_kv, value_name = "K=V")]
    params: Vec<(String, String)>,
    /// The topology segment set to ask about, k=v[,k2=v2].
    #[arg(long, value_parser = parse_segments, value_name = "K=V,...")]
    topology: Option<BTreeMap<String, String>>,
}

#[derive(clap::Args, Debug)]
struct CreateSnapshot {
    /// The snapshot's name.
    name: String,
    #[arg(long, value_name = "VOLUME_ID")]
    source_volume: String,
    #[arg(long = "param", value_parser = parse_kv, value_name = "K=V")]
    params: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct ListSnapshots {
    #[command(flatten)]
    paging: Paging,
    /// Only snapshots of this volume.
    #[arg(long, default_value = "", value_name = "VOLUME_ID")]
    source_volume: String,
    /// Only this snapshot.
    #[arg(long, default_value = "")]
    snapshot_id: String,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct ExpandVolume {
    volume_id: String,
    /// required_bytes, e.g. 2Gi.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    #[arg(long, value_parser = parse_size)]
    limit: Option<u64>,
    #[arg(long = "cap", value_parser = parse_cap)]
    cap: Option<csi::VolumeCapability>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct ModifyVolume {
    volume_id: String,
    #[arg(long = "mutable-param", value_parser = parse_kv, value_name = "K=V")]
    mutable_params: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct NodeStage {
    volume_id: String,
    #[arg(long, value_name = "PATH")]
    staging_path: String,
    /// The volume capability; default mount,,SINGLE_NODE_WRITER.
    #[arg(long = "cap", value_parser = parse_cap)]
    cap: Option<csi::VolumeCapability>,
    #[arg(long = "publish-context", value_parser = parse_kv, value_name = "K=V")]
    publish_context: Vec<(String, String)>,
    #[arg(long = "volume-context", value_parser = parse_kv, value_name = "K=V")]
    volume_context: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct NodeUnstage {
    volume_id: String,
    #[arg(long, value_name = "PATH")]
    staging_path: String,
}

#[derive(clap::Args, Debug)]
struct NodePublish {
    volume_id: String,
    #[arg(long, value_name = "PATH")]
    target_path: String,
    #[arg(long, value_name = "PATH", default_value = "")]
    staging_path: String,
    /// The volume capability; default mount,,SINGLE_NODE_WRITER.
    #[arg(long = "cap", value_parser = parse_cap)]
    cap: Option<csi::VolumeCapability>,
    #[arg(long)]
    readonly: bool,
    #[arg(long = "publish-context", value_parser = parse_kv, value_name = "K=V")]
    publish_context: Vec<(String, String)>,
    #[arg(long = "volume-context", value_parser = parse_kv, value_name = "K=V")]
    volume_context: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(clap::Args, Debug)]
struct NodeUnpublish {
    volume_id: String,
    #[arg(long, value_name = "PATH")]
    target_path: String,
}

#[derive(clap::Args, Debug)]
struct NodeStats {
    volume_id: String,
    #[arg(long, value_name = "PATH")]
    volume_path: String,
    #[arg(long, value_name = "PATH", default_value = "")]
    staging_path: String,
}

#[derive(clap::Args, Debug)]
struct NodeExpand {
    volume_id: String,
    #[arg(long, value_name = "PATH")]
    volume_path: String,
    #[arg(long, value_name = "PATH", default_value = "")]
    staging_path: String,
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    #[arg(long, value_parser = parse_size)]
    limit: Option<u64>,
    #[arg(long = "cap", value_parser = parse_cap)]
    cap: Option<csi::VolumeCapability>,
    #[command(flatten)]
    secrets: Secrets,
}

/// Why a ctl run failed: a gRPC code and a message (never holding secrets).
#[derive(Debug)]
struct Failure {
    code: Code,
    message: String,
}

impl Failure {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Self::new(s.code(), s.message())
    }
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let output = args.output;
    match execute(args).await {
        Ok((value, view)) => {
            let text = match output {
                Output::Json => {
                    let mut s = serde_json::to_string_pretty(&value)?;
                    s.push('\n');
                    s
                }
                Output::Table => render::render(&value, &view),
            };
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("ERROR {}: {}", code_name(f.code), f.message);
            std::process::exit(f.code as i32);
        }
    }
}

/// The canonical name of a gRPC status code, as in the CSI spec's tables.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

struct Clients {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    timeout: Duration,
}

impl Clients {
    /// Awaits one RPC under the deadline; returns the response message.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(Failure::new(
                Code::DeadlineExceeded,
                format!("no response within {}s", self.timeout.as_secs()),
            )),
        }
    }
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<Clients, Failure> {
    let ep = Endpoint::parse(endpoint)
        .map_err(|e| Failure::new(Code::InvalidArgument, e.to_string()))?;
    let ch = match tokio::time::timeout(timeout, ep.connect()).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => {
            // The transport's own message is generic; the root cause names the problem.
            let mut root: &dyn std::error::Error = &e;
            while let Some(s) = root.source() {
                root = s;
            }
            return Err(Failure::new(
                Code::Unavailable,
                format!("connecting to {ep}: {root}"),
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                Code::Unavailable,
                format!(
                    "connecting to {ep}: no answer within {}s",
                    timeout.as_secs()
                ),
            ));
        }
    };
    Ok(Clients {
        identity: IdentityClient::new(ch.clone()),
        controller: ControllerClient::new(ch.clone()),
        node: NodeClient::new(ch),
        timeout,
    })
}

fn map(kv: Vec<(String, String)>) -> HashMap<String, String> {
    kv.into_iter().collect()
}

fn range(required: Option<u64>, limit: Option<u64>) -> Option<csi::CapacityRange> {
    (required.is_some() || limit.is_some()).then(|| csi::CapacityRange {
        required_bytes: required.unwrap_or(0) as i64,
        limit_bytes: limit.unwrap_or(0) as i64,
    })
}

fn default_cap() -> csi::VolumeCapability {
    parse_cap("mount,,SINGLE_NODE_WRITER").expect("the default capability parses")
}

fn caps_or_default(caps: Vec<csi::VolumeCapability>) -> Vec<csi::VolumeCapability> {
    if caps.is_empty() {
        vec![default_cap()]
    } else {
        caps
    }
}

/// Runs the command: every request is built before the endpoint is dialled,
/// so bad local input never half-runs anything.
async fn execute(args: Args) -> Result<(Value, View), Failure> {
    use Command as C;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let ep = args.endpoint.clone();
    macro_rules! c {
        () => {
            connect(&ep, timeout).await?
        };
    }
    Ok(match args.command {
        C::PluginInfo => {
            let c = c!();
            let r = c
                .call(
                    c.identity
                        .clone()
                        .get_plugin_info(csi::GetPluginInfoRequest {}),
                )
                .await?;
            (json::plugin_info(&r), View::Fields)
        }
        C::PluginCapabilities => {
            let c = c!();
            let r = c
                .call(
                    c.identity
                        .clone()
                        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}),
                )
                .await?;
            (json::plugin_capabilities(&r), View::List("capabilities"))
        }
        C::Probe => {
            let c = c!();
            let r = c
                .call(c.identity.clone().probe(csi::ProbeRequest {}))
                .await?;
            (json::probe(&r), View::Fields)
        }
        C::CreateVolume(a) => {
            use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
            let source = match (a.from_snapshot, a.from_volume) {
                (Some(snapshot_id), _) => Some(Type::Snapshot(SnapshotSource { snapshot_id })),
                (None, Some(volume_id)) => Some(Type::Volume(VolumeSource { volume_id })),
                (None, None) => None,
            };
            let topo = |v: Vec<BTreeMap<String, String>>| -> Vec<csi::Topology> {
                v.into_iter()
                    .map(|s| csi::Topology {
                        segments: s.into_iter().collect(),
                    })
                    .collect()
            };
            let accessibility_requirements = (!a.requisite.is_empty() || !a.preferred.is_empty())
                .then(|| csi::TopologyRequirement {
                    requisite: topo(a.requisite),
                    preferred: topo(a.preferred),
                });
            let req = csi::CreateVolumeRequest {
                name: a.name,
                capacity_range: range(a.size, a.limit),
                volume_capabilities: caps_or_default(a.caps),
                parameters: map(a.params),
                secrets: read_secrets(&a.secrets)?,
                volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
                accessibility_requirements,
                mutable_parameters: map(a.mutable_params),
            };
            let c = c!();
            let r = c.call(c.controller.clone().create_volume(req)).await?;
            (json::create_volume(&r), View::Fields)
        }
        C::DeleteVolume(a) => {
            let req = csi::DeleteVolumeRequest {
                volume_id: a.volume_id,
                secrets: read_secrets(&a.secrets)?,
            };
            let c = c!();
            c.call(c.controller.clone().delete_volume(req)).await?;
            (json::empty(), View::Fields)
        }
        C::ControllerPublish(a) => {
            let req = csi::ControllerPublishVolumeRequest {
                volume_id: a.volume_id,
                node_id: a.node_id,
                volume_capability: Some(a.cap.unwrap_or_else(default_cap)),
                readonly: a.readonly,
                secrets: read_secrets(&a.secrets)?,
                volume_context: map(a.volume_context),
            };
            let c = c!();
            let r = c
                .call(c.controller.clone().controller_publish_volume(req))
                .await?;
            (json::controller_publish(&r), View::Fields)
        }
        C::ControllerUnpublish(a) => {
            let req = csi::ControllerUnpublishVolumeRequest {
                volume_id: a.volume_id,
                node_id: a.node_id,
                secrets: read_secrets(&a.secrets)?,
            };
            let c = c!();
            c.call(c.controller.clone().controller_unpublish_volume(req))
                .await?;
            (json::empty(), View::Fields)
        }
        C::ValidateCapabilities(a) => {
            let req = csi::ValidateVolumeCapabilitiesRequest {
                volume_id: a.volume_id,
                volume_context: map(a.volume_context),
                volume_capabilities: caps_or_default(a.caps),
                parameters: map(a.params),
                secrets: read_secrets(&a.secrets)?,
                mutable_parameters: map(a.mutable_params),
            };
            let c = c!();
            let r = c
                .call(c.controller.clone().validate_volume_capabilities(req))
                .await?;
            (json::validate(&r), View::Fields)
        }
        C::ListVolumes(a) => {
            let req = csi::ListVolumesRequest {
                max_entries: a.max_entries,
                starting_token: a.starting_token,
            };
            let c = c!();
            let r = c.call(c.controller.clone().list_volumes(req)).await?;
            (json::list_volumes(&r), View::Volumes)
        }
        C::GetCapacity(a) => {
            let req = csi::GetCapacityRequest {
                volume_capabilities: a.caps,
                parameters: map(a.params),
                accessible_topology: a.topology.map(|s| csi::Topology {
                    segments: s.into_iter().collect(),
                }),
            };
            let c = c!();
            let r = c.call(c.controller.clone().get_capacity(req)).await?;
            (json::capacity(&r), View::Fields)
        }
        C::ControllerCapabilities => {
            let c = c!();
            let r = c
                .call(
                    c.controller
                        .clone()
                        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}),
                )
                .await?;
            (
                json::controller_capabilities(&r),
                View::List("capabilities"),
            )
        }
        C::CreateSnapshot(a) => {
            let req = csi::CreateSnapshotRequest {
                source_volume_id: a.source_volume,
                name: a.name,
                secrets: read_secrets(&a.secrets)?,
                parameters: map(a.params),
            };
            let c = c!();
            let r = c.call(c.controller.clone().create_snapshot(req)).await?;
            (json::with_snapshot(r.snapshot.as_ref()), View::Fields)
        }
        C::DeleteSnapshot(a) => {
            let req = csi::DeleteSnapshotRequest {
                snapshot_id: a.snapshot_id,
                secrets: read_secrets(&a.secrets)?,
            };
            let c = c!();
            c.call(c.controller.clone().delete_snapshot(req)).await?;
            (json::empty(), View::Fields)
        }
        C::ListSnapshots(a) => {
            let req = csi::ListSnapshotsRequest {
                max_entries: a.paging.max_entries,
                starting_token: a.paging.starting_token,
                source_volume_id: a.source_volume,
                snapshot_id: a.snapshot_id,
                secrets: read_secrets(&a.secrets)?,
            };
            let c = c!();
            let r = c.call(c.controller.clone().list_snapshots(req)).await?;
            (json::list_snapshots(&r), View::Snapshots)
        }
        C::GetSnapshot(a) => {
            let req = csi::GetSnapshotRequest {
                snapshot_id: a.snapshot_id,
                secrets: read_secrets(&a.secrets)?,
            };
            let c = c!();
            let r = c.call(c.controller.clone().get_snapshot(req)).await?;
            (json::with_snapshot(r.snapshot.as_ref()), View::Fields)
        }
        C::ExpandVolume(a) => {
            let req = csi::ControllerExpandVolumeRequest {
                volume_id: a.volume_id,
                capacity_range: range(Some(a.size), a.limit),
                secrets: read_secrets(&a.secrets)?,
                volume_capability: a.cap,
            };
            let c = c!();
            let r = c
                .call(c.controller.clone().controller_expand_volume(req))
                .await?;
            (json::controller_expand(&r), View::Fields)
        }
        C::GetVolume(a) => {
            let req = csi::ControllerGetVolumeRequest {
                volume_id: a.volume_id,
            };
            let c = c!();
            let r = c
                .call(c.controller.clone().controller_get_volume(req))
                .await?;
            (json::get_volume(&r), View::Fields)
        }
        C::ModifyVolume(a) => {
            let req = csi::ControllerModifyVolumeRequest {
                volume_id: a.volume_id,
                secrets: read_secrets(&a.secrets)?,
                mutable_parameters: map(a.mutable_params),
            };
            let c = c!();
            c.call(c.controller.clone().controller_modify_volume(req))
                .await?;
            (json::empty(), View::Fields)
        }
        C::NodeStage(a) => {
            let req = csi::NodeStageVolumeRequest {
                volume_id: a.volume_id,
                publish_context: map(a.publish_context),
                staging_target_path: a.staging_path,
                volume_capability: Some(a.cap.unwrap_or_else(default_cap)),
                secrets: read_secrets(&a.secrets)?,
                volume_context: map(a.volume_context),
            };
            let c = c!();
            c.call(c.node.clone().node_stage_volume(req)).await?;
            (json::empty(), View::Fields)
        }
        C::NodeUnstage(a) => {
            let req = csi::NodeUnstageVolumeRequest {
                volume_id: a.volume_id,
                staging_target_path: a.staging_path,
            };
            let c = c!();
            c.call(c.node.clone().node_unstage_volume(req)).await?;
            (json::empty(), View::Fields)
        }
        C::NodePublish(a) => {
            let req = csi::NodePublishVolumeRequest {
                volume_id: a.volume_id,
                publish_context: map(a.publish_context),
                staging_target_path: a.staging_path,
                target_path: a.target_path,
                volume_capability: Some(a.cap.unwrap_or_else(default_cap)),
                readonly: a.readonly,
                secrets: read_secrets(&a.secrets)?,
                volume_context: map(a.volume_context),
            };
            let c = c!();
            c.call(c.node.clone().node_publish_volume(req)).await?;
            (json::empty(), View::Fields)
        }
        C::NodeUnpublish(a) => {
            let req = csi::NodeUnpublishVolumeRequest {
                volume_id: a.volume_id,
                target_path: a.target_path,
            };
            let c = c!();
            c.call(c.node.clone().node_unpublish_volume(req)).await?;
            (json::empty(), View::Fields)
        }
        C::NodeStats(a) => {
            let req = csi::NodeGetVolumeStatsRequest {
                volume_id: a.volume_id,
                volume_path: a.volume_path,
                staging_target_path: a.staging_path,
            };
            let c = c!();
            let r = c.call(c.node.clone().node_get_volume_stats(req)).await?;
            (json::node_stats(&r), View::Usage)
        }
        C::NodeExpand(a) => {
            let req = csi::NodeExpandVolumeRequest {
                volume_id: a.volume_id,
                volume_path: a.volume_path,
                capacity_range: range(a.size, a.limit),
                staging_target_path: a.staging_path,
                volume_capability: a.cap,
                secrets: read_secrets(&a.secrets)?,
            };
            let c = c!();
            let r = c.call(c.node.clone().node_expand_volume(req)).await?;
            (json::node_expand(&r), View::Fields)
        }
        C::NodeCapabilities => {
            let c = c!();
            let r = c
                .call(
                    c.node
                        .clone()
                        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {}),
                )
                .await?;
            (json::node_capabilities(&r), View::List("capabilities"))
        }
        C::Nodes(a) => nodes::run(a, timeout).await?,
        C::NodeInfo => {
            let c = c!();
            let r = c
                .call(c.node.clone().node_get_info(csi::NodeGetInfoRequest {}))
                .await?;
            (json::node_info(&r), View::Fields)
        }
    })
}

/// Reads `--secrets-file`. Errors name the file and the line or key, never
/// a value.
fn read_secrets(s: &Secrets) -> Result<HashMap<String, String>, Failure> {
    match &s.secrets_file {
        None => Ok(HashMap::new()),
        Some(path) => load_secrets(path).map_err(|e| Failure::new(Code::InvalidArgument, e)),
    }
}

/// A secrets file (a JSON object, or key=value lines); errors never quote a value.
pub(crate) fn load_secrets(path: &std::path::Path) -> Result<HashMap<String, String>, String> {
    let bad = |what: String| format!("--secrets-file {}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    parse_secrets(&text).map_err(bad)
}

/// A JSON object of strings, or `key=value` lines (blank lines and `#`
/// comments skipped). Errors never quote a value.
fn parse_secrets(text: &str) -> Result<HashMap<String, String>, String> {
    if text.trim_start().starts_with('{') {
        // serde_json's syntax errors give a position, never the content.
        let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let Value::Object(o) = v else {
            return Err("expected a JSON object".into());
        };
        return o
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(format!("the value of {k:?} is not a string")),
            })
            .collect();
    }
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {} is not key=value", i + 1));
        };
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!(
                "line {} is not key=value (empty key, or whitespace in it)",
                i + 1
            ));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `k=v` (the value may hold `=`).
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `k=v,k2=v2`: one topology segment set.
fn parse_segments(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(parse_kv)
        .collect::<Result<BTreeMap<_, _>, _>>()
        .and_then(|m| {
            if m.is_empty() {
                Err("expected KEY=VALUE[,KEY=VALUE...]".to_string())
            } else {
                Ok(m)
            }
        })
}

/// A size: bytes, `k`/`M`/`G`/`T` (powers of 1000) or `Ki`/`Mi`/`Gi`/`Ti`
/// (powers of 1024), as Kubernetes quantities write them.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1073741824, 1Gi, 512Mi)"))?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size suffix {suffix:?} (use k M G T Ki Mi Gi Ti)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|&b| b <= i64::MAX as u64)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// An access mode by its CSI name; case and `-`/`_` are forgiven.
fn parse_mode(s: &str) -> Result<csi::volume_capability::access_mode::Mode, String> {
    use csi::volume_capability::access_mode::Mode;
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    match Mode::from_str_name(&name) {
        Some(Mode::Unknown) | None => Err(format!(
            "{s:?} is not an access mode (SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, \
             MULTI_NODE_READER_ONLY, MULTI_NODE_SINGLE_WRITER, MULTI_NODE_MULTI_WRITER, \
             SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER)"
        )),
        Some(m) => Ok(m),
    }
}

/// `mount,FSTYPE,MODE[,FLAG...]` or `block,MODE`.
fn parse_cap(s: &str) -> Result<csi::VolumeCapability, String> {
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let parts: Vec<&str> = s.split(',').collect();
    let access_type = match parts.as_slice() {
        ["block", mode] => (AccessType::Block(BlockVolume {}), *mode),
        ["mount", fs, mode, flags @ ..] => (
            AccessType::Mount(MountVolume {
                fs_type: fs.to_string(),
                mount_flags: flags
                    .iter()
                    .filter(|f| !f.is_empty())
                    .map(|f| f.to_string())
                    .collect(),
                volume_mount_group: String::new(),
            }),
            *mode,
        ),
        _ => {
            return Err(format!(
                "{s:?} is not a capability: use mount,FSTYPE,MODE[,MOUNT_FLAG...] or block,MODE"
            ));
        }
    };
    let (access, mode) = access_type;
    Ok(csi::VolumeCapability {
        access_type: Some(access),
        access_mode: Some(AccessMode {
            mode: parse_mode(mode)? as i32,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "Gi", "1.5Gi", "1GB", "-1", "99999999999Ti"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capabilities() {
        use csi::volume_capability::AccessType;
        use csi::volume_capability::access_mode::Mode;
        let c = parse_cap("mount,ext4,SINGLE_NODE_WRITER,noatime,discard").unwrap();
        let Some(AccessType::Mount(m)) = &c.access_type else {
            panic!("{c:?}")
        };
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.mount_flags, ["noatime", "discard"]);
        assert_eq!(c.access_mode.unwrap().mode(), Mode::SingleNodeWriter);
        let c = parse_cap("block,multi-node-multi-writer").unwrap();
        assert!(matches!(c.access_type, Some(AccessType::Block(_))));
        assert_eq!(c.access_mode.unwrap().mode(), Mode::MultiNodeMultiWriter);
        let c = parse_cap("mount,,single_node_reader_only").unwrap();
        assert_eq!(c.access_mode.unwrap().mode(), Mode::SingleNodeReaderOnly);
        for bad in [
            "mount,ext4",
            "block",
            "block,ext4,SINGLE_NODE_WRITER",
            "nfs,SINGLE_NODE_WRITER",
            "mount,ext4,UNKNOWN",
        ] {
            assert!(parse_cap(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_values_and_topology() {
        assert_eq!(parse_kv("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_kv("=x").is_err());
        assert!(parse_kv("x").is_err());
        let s = parse_segments("zone=a,rack=r1").unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_segments("").is_err());
    }

    #[test]
    fn secrets_never_echo_values() {
        let s = parse_secrets("# c\nuserID=admin\nuserKey=AQ==x=\n\n").unwrap();
        assert_eq!(s["userKey"], "AQ==x=");
        let s = parse_secrets(r#"{"userKey": "k3y"}"#).unwrap();
        assert_eq!(s["userKey"], "k3y");
        for bad in [
            "userKey AQsecret",
            r#"{"userKey": 12345}"#,
            r#"{"userKey": "AQsecret""#,
            "[\"AQsecret\"]",
        ] {
            let e = parse_secrets(bad).unwrap_err();
            assert!(!e.contains("AQsecret") && !e.contains("12345"), "{e}");
        }
    }
}
