//! The gRPC layer: request validation, conversion and error mapping only.
//!
//! One file per CSI service ([`identity`], [`controller`], [`group`],
//! [`node`]). Each handler parses its request into typed arguments, runs one
//! domain function on a blocking thread through [`run`], and converts the
//! result.
//! [`run`] is also the one place that logs every RPC (method, object, code,
//! duration) — requests are never `Debug`-printed, because their `secrets`
//! hold credentials.

pub mod controller;
pub mod group;
pub mod identity;
pub mod node;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Instant;

use haina_csi::v1 as csi;
use tonic::{Response, Status};

use crate::error::{Error, Result};
use crate::volume::{
    AccessMode, AccessType, Capability, ContentSource, GroupSnapshot, Secrets, Segments, Snapshot,
    Volume,
};

/// Runs `f` off the async runtime and logs the call once.
pub(crate) async fn run<T, F>(
    method: &'static str,
    object: &str,
    f: F,
) -> Result<Response<T>, Status>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let start = Instant::now();
    // The ID or name is client input: the log repeats a bounded part of it.
    let bounded;
    let object = if object.len() > crate::ids::MAX_ID_LEN {
        bounded = crate::ids::echo(object);
        bounded.as_str()
    } else {
        object
    };
    let span = tracing::info_span!("rpc", method, id = object);
    let result = match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(r) => r,
        Err(e) => Err(Error::internal("the operation's task failed", e)),
    };
    let elapsed = start.elapsed();
    let code = result
        .as_ref()
        .map_or_else(Error::code, |_| tonic::Code::Ok);
    crate::metrics::observe(method, code, elapsed);
    match &result {
        Ok(_) => {
            tracing::info!(method, id = object, code = ?code, ms = elapsed.as_secs_f64() * 1e3, "rpc")
        }
        Err(e) => {
            tracing::warn!(method, id = object, code = ?code, ms = elapsed.as_secs_f64() * 1e3, error = %e, "rpc")
        }
    }
    result.map(Response::new).map_err(Status::from)
}

pub(crate) fn sorted(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

pub(crate) fn secrets(m: HashMap<String, String>) -> Secrets {
    Secrets(sorted(m))
}

/// Validates one `VolumeCapability`.
pub(crate) fn capability(field: &str, c: Option<&csi::VolumeCapability>) -> Result<Capability> {
    use csi::volume_capability::{AccessType as At, access_mode::Mode};
    let c = c.ok_or_else(|| Error::InvalidArgument(format!("{field} is required")))?;
    let mode = match c.access_mode.as_ref().map(|m| m.mode()) {
        Some(Mode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
        Some(Mode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
        Some(Mode::MultiNodeReaderOnly) => AccessMode::MultiNodeReaderOnly,
        Some(Mode::MultiNodeSingleWriter) => AccessMode::MultiNodeSingleWriter,
        Some(Mode::MultiNodeMultiWriter) => AccessMode::MultiNodeMultiWriter,
        Some(Mode::SingleNodeSingleWriter) => AccessMode::SingleNodeSingleWriter,
        Some(Mode::SingleNodeMultiWriter) => AccessMode::SingleNodeMultiWriter,
        Some(Mode::Unknown) | None => {
            return Err(Error::InvalidArgument(format!(
                "{field}.access_mode is required"
            )));
        }
    };
    let access = match &c.access_type {
        Some(At::Block(_)) => AccessType::Block,
        Some(At::Mount(m)) => AccessType::Mount {
            fs_type: m.fs_type.clone(),
            mount_flags: m.mount_flags.clone(),
        },
        None => {
            return Err(Error::InvalidArgument(format!(
                "{field}.access_type (block or mount) is required"
            )));
        }
    };
    Ok(Capability { access, mode })
}

pub(crate) fn capabilities(field: &str, caps: &[csi::VolumeCapability]) -> Result<Vec<Capability>> {
    caps.iter()
        .enumerate()
        .map(|(i, c)| capability(&format!("{field}[{i}]"), Some(c)))
        .collect()
}

pub(crate) fn topology(segments: Option<Segments>) -> Vec<csi::Topology> {
    segments
        .map(|s| {
            vec![csi::Topology {
                segments: s.into_iter().collect(),
            }]
        })
        .unwrap_or_default()
}

pub(crate) fn content_source(s: &ContentSource) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    csi::VolumeContentSource {
        r#type: Some(match s {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

pub(crate) fn volume(v: &Volume, topo: Option<Segments>) -> csi::Volume {
    csi::Volume {
        capacity_bytes: v.capacity as i64,
        volume_id: v.id.clone(),
        volume_context: v.context.clone().into_iter().collect(),
        content_source: v.source.as_ref().map(content_source),
        accessible_topology: topology(topo),
    }
}

pub(crate) fn snapshot(s: &Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: s.size as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created.0,
            nanos: s.created.1,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: s.group_snapshot_id.clone().unwrap_or_default(),
    }
}

pub(crate) fn group_snapshot(g: &GroupSnapshot) -> csi::VolumeGroupSnapshot {
    csi::VolumeGroupSnapshot {
        group_snapshot_id: g.id.clone(),
        snapshots: g.members.iter().map(snapshot).collect(),
        creation_time: Some(prost_types::Timestamp {
            seconds: g.created.0,
            nanos: g.created.1,
        }),
        ready_to_use: !g.members.is_empty() && g.members.iter().all(|s| s.ready),
    }
}
