//! CSI Node service: parse, call [`crate::node`], convert.

use std::sync::Arc;

use haina_csi::v1 as csi;
use haina_csi::v1::node_server::Node;
use haina_csi::v1::node_service_capability::rpc::Type as Rpc;
use tonic::{Request, Response, Status};

use super::{capability, run, secrets, sorted};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ids::{self, VolumeId};
use crate::node as ops;
use crate::volume::{Secrets, TOPOLOGY_NODE_KEY};

pub struct NodeService {
    pub driver: Arc<Driver>,
}

type R<T> = Result<Response<T>, Status>;

const CAPABILITIES: &[Rpc] = &[
    Rpc::StageUnstageVolume,
    Rpc::GetVolumeStats,
    Rpc::ExpandVolume,
    Rpc::VolumeCondition,
    Rpc::SingleNodeMultiWriter,
];

/// The volume an ID names, the pool it lives in, and the per-volume guard.
fn claim<'d>(
    d: &'d Driver,
    raw: &str,
) -> Result<(
    VolumeId,
    &'d crate::backend::SharedBackend,
    crate::limiter::Guard,
)> {
    let id = VolumeId::parse_existing("volume_id", raw)?;
    let backend = d.pool_of(&id)?;
    let guard = d.limiter.volume(&id)?;
    Ok((id, backend, guard))
}

/// The volume's attachment on this node (looked up once per call), or
/// `NOT_FOUND` unless its pool knows it. The kernel is asked first: a node plugin may hold no credentials to
/// look an RBD image up (the CO sends none with these calls).
fn known_here(
    backend: &dyn crate::backend::Backend,
    id: &VolumeId,
    secrets: &Secrets,
) -> Result<Option<crate::backend::Attachment>> {
    let att = backend.attachment(id)?;
    if att.is_some() || backend.get_volume(id, secrets)?.is_some() {
        return Ok(att);
    }
    Err(Error::NotFound(format!("volume_id {id} does not exist")))
}

/// A path the CO says holds the volume: required, and `NOT_FOUND` unless it
/// is an absolute path (the spec's answer for a wrong path). Whether it
/// exists is asked of the host, under a deadline, by the node operation.
fn volume_path(field: &str, raw: &str) -> Result<std::path::PathBuf> {
    if raw.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    ids::abs_path(field, raw).map_err(|_| {
        Error::NotFound(format!(
            "{field} {} does not exist: it is not an absolute path",
            ids::echo_path(std::path::Path::new(raw))
        ))
    })
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> R<csi::NodeStageVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("NodeStageVolume", &id, move || {
            VolumeId::parse("volume_id", &r.volume_id)?;
            let staging = ids::abs_path("staging_target_path", &r.staging_target_path)?;
            let cap = capability("volume_capability", r.volume_capability.as_ref())?;
            let (id, backend, _guard) = claim(&d, &r.volume_id)?;
            let context = sorted(r.volume_context);
            let req = ops::StageRequest {
                volume_id: &id,
                staging: &staging,
                capability: &cap,
                context: &context,
                readonly: r
                    .publish_context
                    .get("readonly")
                    .is_some_and(|v| v == "true"),
            };
            ops::stage(&d, backend.as_ref(), &req, &secrets(r.secrets))?;
            Ok(csi::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> R<csi::NodeUnstageVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("NodeUnstageVolume", &id, move || {
            VolumeId::parse("volume_id", &r.volume_id)?;
            let staging = ids::abs_path("staging_target_path", &r.staging_target_path)?;
            let (id, backend, _guard) = claim(&d, &r.volume_id)?;
            ops::unstage(&d, backend.as_ref(), &id, &staging)?;
            Ok(csi::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> R<csi::NodePublishVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("NodePublishVolume", &id, move || {
            VolumeId::parse("volume_id", &r.volume_id)?;
            let staging = ids::abs_path("staging_target_path", &r.staging_target_path)?;
            let target = ids::abs_path("target_path", &r.target_path)?;
            let cap = capability("volume_capability", r.volume_capability.as_ref())?;
            let (id, backend, _guard) = claim(&d, &r.volume_id)?;
            let req = ops::PublishRequest {
                volume_id: &id,
                staging: &staging,
                target: &target,
                capability: &cap,
                readonly: r.readonly,
            };
            ops::publish(&d, backend.as_ref(), &req)?;
            Ok(csi::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> R<csi::NodeUnpublishVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("NodeUnpublishVolume", &id, move || {
            VolumeId::parse("volume_id", &r.volume_id)?;
            let target = ids::abs_path("target_path", &r.target_path)?;
            // Only what the kernel shows is this volume's is unmounted; an ID
            // that names nothing here owns nothing here (the spec's OK).
            let Ok(id) = VolumeId::parse_existing("volume_id", &r.volume_id) else {
                return Ok(csi::NodeUnpublishVolumeResponse {});
            };
            let Ok(backend) = d.pool_of(&id) else {
                return Ok(csi::NodeUnpublishVolumeResponse {});
            };
            let _guard = d.limiter.volume(&id)?;
            ops::unpublish(&d, backend.as_ref(), &id, &target)?;
            Ok(csi::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> R<csi::NodeGetVolumeStatsResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("NodeGetVolumeStats", &id, move || {
            use csi::volume_usage::Unit;
            VolumeId::parse("volume_id", &r.volume_id)?;
            let path = volume_path("volume_path", &r.volume_path)?;
            let id = VolumeId::parse_existing("volume_id", &r.volume_id)?;
            let backend = d.pool_of(&id)?;
            // NodeGetVolumeStats carries no secrets.
            let att = known_here(backend.as_ref(), &id, &Secrets::default())?;
            let s = ops::stats(&d, backend.as_ref(), &id, &path, att)?;
            let usage = |(total, used, available): (u64, u64, u64), unit: Unit| csi::VolumeUsage {
                available: available as i64,
                total: total as i64,
                used: used as i64,
                unit: unit as i32,
            };
            let mut out = vec![usage(s.bytes, Unit::Bytes)];
            out.extend(s.inodes.map(|i| usage(i, Unit::Inodes)));
            Ok(csi::NodeGetVolumeStatsResponse {
                usage: out,
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: s.abnormal.is_some(),
                    message: s.abnormal.unwrap_or_else(|| "volume is healthy".into()),
                }),
            })
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> R<csi::NodeExpandVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("NodeExpandVolume", &id, move || {
            VolumeId::parse("volume_id", &r.volume_id)?;
            let path = volume_path("volume_path", &r.volume_path)?;
            let cap = r
                .volume_capability
                .as_ref()
                .map(|c| capability("volume_capability", Some(c)))
                .transpose()?;
            let (id, backend, _guard) = claim(&d, &r.volume_id)?;
            let att = known_here(backend.as_ref(), &id, &secrets(r.secrets))?;
            let kind = d.host.lstat(&path)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "volume_path {} does not exist",
                    ids::echo_path(&path)
                ))
            })?;
            let block = cap.as_ref().is_some_and(|c| c.is_block())
                || kind != haina_sys::host::FileKind::Dir;
            let size = ops::expand(&d, backend.as_ref(), &id, &path, block, att)?;
            Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: size as i64,
            })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> R<csi::NodeGetCapabilitiesResponse> {
        use csi::node_service_capability::{Rpc as RpcCap, Type};
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| csi::NodeServiceCapability {
                r#type: Some(Type::Rpc(RpcCap { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> R<csi::NodeGetInfoResponse> {
        let d = &self.driver;
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: d.node_id.clone(),
            max_volumes_per_node: d.max_volumes_per_node,
            accessible_topology: Some(csi::Topology {
                segments: [(TOPOLOGY_NODE_KEY.to_string(), d.node_id.clone())].into(),
            }),
        }))
    }
}
