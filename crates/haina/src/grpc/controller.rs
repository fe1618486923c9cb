//! CSI Controller service: parse, call [`crate::controller`], convert.

use std::sync::Arc;

use haina_csi::v1 as csi;
use haina_csi::v1::controller_server::Controller;
use haina_csi::v1::controller_service_capability::rpc::Type as Rpc;
use tonic::{Request, Response, Status};

use super::{capabilities, capability, run, secrets, sorted};
use crate::controller::{self as ops, CreateRequest, PublishRequest, TopologyRequirement};
use crate::driver::Driver;
use crate::error::Error;
use crate::ids;
use crate::volume::{ContentSource, Secrets};

pub struct ControllerService {
    pub driver: Arc<Driver>,
}

type R<T> = Result<Response<T>, Status>;

/// GetSnapshot is served but not advertised: csi-sanity before v5.5 fails
/// any plugin that lists GET_SNAPSHOT.
const CAPABILITIES: &[Rpc] = &[
    Rpc::CreateDeleteVolume,
    Rpc::PublishUnpublishVolume,
    Rpc::ListVolumes,
    Rpc::GetCapacity,
    Rpc::CreateDeleteSnapshot,
    Rpc::ListSnapshots,
    Rpc::CloneVolume,
    Rpc::PublishReadonly,
    Rpc::ExpandVolume,
    Rpc::ListVolumesPublishedNodes,
    Rpc::VolumeCondition,
    Rpc::GetVolume,
    Rpc::SingleNodeMultiWriter,
    Rpc::ModifyVolume,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> R<csi::CreateVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let name = r.name.clone();
        run("CreateVolume", &name, move || {
            use csi::volume_content_source::Type;
            let caps = capabilities("volume_capabilities", &r.volume_capabilities)?;
            let source = match r.volume_content_source.and_then(|s| s.r#type) {
                Some(Type::Snapshot(s)) => Some(ContentSource::Snapshot(s.snapshot_id)),
                Some(Type::Volume(v)) => Some(ContentSource::Volume(v.volume_id)),
                None => None,
            };
            let topology = r.accessibility_requirements.map(|t| TopologyRequirement {
                requisite: t
                    .requisite
                    .into_iter()
                    .map(|s| sorted(s.segments))
                    .collect(),
                preferred: t
                    .preferred
                    .into_iter()
                    .map(|s| sorted(s.segments))
                    .collect(),
            });
            let range = r.capacity_range.unwrap_or_default();
            let req = CreateRequest {
                name: r.name,
                required_bytes: range.required_bytes,
                limit_bytes: range.limit_bytes,
                capabilities: caps,
                parameters: sorted(r.parameters),
                source,
                topology,
                mutable_parameters: sorted(r.mutable_parameters),
            };
            let v = ops::create_volume(&d, req, &secrets(r.secrets))?;
            let topo = d
                .pool_of(&ids::VolumeId::parse_existing("volume_id", &v.id)?)?
                .topology();
            Ok(csi::CreateVolumeResponse {
                volume: Some(super::volume(&v, topo)),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> R<csi::DeleteVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("DeleteVolume", &id, move || {
            ops::delete_volume(&d, &r.volume_id, &secrets(r.secrets))?;
            Ok(csi::DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> R<csi::ControllerPublishVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("ControllerPublishVolume", &id, move || {
            if r.volume_id.is_empty() {
                return Err(Error::InvalidArgument("volume_id is required".into()));
            }
            let node_id = ids::node_id("node_id", &r.node_id)?;
            let cap = capability("volume_capability", r.volume_capability.as_ref())?;
            let req = PublishRequest {
                volume_id: r.volume_id,
                node_id,
                capability: cap,
                readonly: r.readonly,
                volume_context: sorted(r.volume_context),
            };
            let ctx = ops::publish_volume(&d, req, &secrets(r.secrets))?;
            Ok(csi::ControllerPublishVolumeResponse {
                publish_context: ctx.into_iter().collect(),
            })
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> R<csi::ControllerUnpublishVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("ControllerUnpublishVolume", &id, move || {
            if r.volume_id.is_empty() {
                return Err(Error::InvalidArgument("volume_id is required".into()));
            }
            if !r.node_id.is_empty() {
                ids::node_id("node_id", &r.node_id)?;
            }
            ops::unpublish_volume(&d, &r.volume_id, &r.node_id, &secrets(r.secrets))?;
            Ok(csi::ControllerUnpublishVolumeResponse {})
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> R<csi::ValidateVolumeCapabilitiesResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("ValidateVolumeCapabilities", &id, move || {
            let caps = capabilities("volume_capabilities", &r.volume_capabilities)?;
            let params = sorted(r.parameters.clone());
            let mutable = sorted(r.mutable_parameters.clone());
            Ok(
                match ops::validate_capabilities(
                    &d,
                    &r.volume_id,
                    &caps,
                    &params,
                    &mutable,
                    &secrets(r.secrets.clone()),
                )? {
                    Ok(()) => csi::ValidateVolumeCapabilitiesResponse {
                        confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                            volume_context: r.volume_context,
                            volume_capabilities: r.volume_capabilities,
                            parameters: r.parameters,
                            mutable_parameters: r.mutable_parameters,
                        }),
                        message: String::new(),
                    },
                    Err(message) => csi::ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message,
                    },
                },
            )
        })
        .await
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> R<csi::ListVolumesResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        run("ListVolumes", "", move || {
            use csi::list_volumes_response::{Entry, VolumeStatus};
            // ListVolumes carries no secrets: the pool's configured credentials, if any.
            let (vols, next_token) =
                ops::list_volumes(&d, r.max_entries, &r.starting_token, &Secrets::default())?;
            let entries = vols
                .iter()
                .map(|v| {
                    let topo = ids::VolumeId::parse_existing("volume_id", &v.id)
                        .ok()
                        .and_then(|id| d.pool_of(&id).ok().and_then(|b| b.topology()));
                    Entry {
                        volume: Some(super::volume(v, topo)),
                        status: Some(VolumeStatus {
                            published_node_ids: v.publications.keys().cloned().collect(),
                            volume_condition: None,
                        }),
                    }
                })
                .collect();
            Ok(csi::ListVolumesResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> R<csi::GetCapacityResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        run("GetCapacity", "", move || {
            let caps = capabilities("volume_capabilities", &r.volume_capabilities)?;
            let topo = r.accessible_topology.map(|t| sorted(t.segments));
            let c = ops::get_capacity(
                &d,
                &caps,
                &sorted(r.parameters),
                topo.as_ref(),
                &Secrets::default(),
            )?;
            // Saturated: a pool larger than int64 (overcommit) still says "plenty".
            let wire = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            Ok(csi::GetCapacityResponse {
                available_capacity: wire(c.available),
                maximum_volume_size: c.maximum_volume_size.map(wire),
                minimum_volume_size: Some(crate::volume::MIB as i64),
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> R<csi::ControllerGetCapabilitiesResponse> {
        use csi::controller_service_capability::{Rpc as RpcCap, Type};
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| csi::ControllerServiceCapability {
                r#type: Some(Type::Rpc(RpcCap { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> R<csi::CreateSnapshotResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let name = r.name.clone();
        run("CreateSnapshot", &name, move || {
            if r.source_volume_id.is_empty() {
                return Err(Error::InvalidArgument(
                    "source_volume_id is required".into(),
                ));
            }
            let s = ops::create_snapshot(
                &d,
                &r.name,
                &r.source_volume_id,
                &sorted(r.parameters),
                &secrets(r.secrets),
            )?;
            Ok(csi::CreateSnapshotResponse {
                snapshot: Some(super::snapshot(&s)),
            })
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> R<csi::DeleteSnapshotResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.snapshot_id.clone();
        run("DeleteSnapshot", &id, move || {
            ops::delete_snapshot(&d, &r.snapshot_id, &secrets(r.secrets))?;
            Ok(csi::DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> R<csi::ListSnapshotsResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        run("ListSnapshots", "", move || {
            let (snaps, next_token) = ops::list_snapshots(
                &d,
                &r.snapshot_id,
                &r.source_volume_id,
                r.max_entries,
                &r.starting_token,
                &secrets(r.secrets),
            )?;
            let entries = snaps
                .iter()
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(super::snapshot(s)),
                })
                .collect();
            Ok(csi::ListSnapshotsResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_snapshot(
        &self,
        req: Request<csi::GetSnapshotRequest>,
    ) -> R<csi::GetSnapshotResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.snapshot_id.clone();
        run("GetSnapshot", &id, move || {
            let s = ops::get_snapshot(&d, &r.snapshot_id, &secrets(r.secrets))?;
            Ok(csi::GetSnapshotResponse {
                snapshot: Some(super::snapshot(&s)),
            })
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> R<csi::ControllerExpandVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("ControllerExpandVolume", &id, move || {
            let range = r
                .capacity_range
                .ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
            let cap = r
                .volume_capability
                .as_ref()
                .map(|c| capability("volume_capability", Some(c)))
                .transpose()?;
            let (capacity, node_required) = ops::expand_volume(
                &d,
                &r.volume_id,
                range.required_bytes,
                range.limit_bytes,
                cap.as_ref(),
                &secrets(r.secrets),
            )?;
            Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: capacity as i64,
                node_expansion_required: node_required,
            })
        })
        .await
    }

    async fn controller_get_volume(
        &self,
        req: Request<csi::ControllerGetVolumeRequest>,
    ) -> R<csi::ControllerGetVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("ControllerGetVolume", &id, move || {
            use csi::controller_get_volume_response::VolumeStatus;
            let (_, backend, v) =
                ops::existing_volume(&d, "volume_id", &r.volume_id, &Secrets::default())?;
            let condition = match backend.health() {
                Ok(()) => csi::VolumeCondition {
                    abnormal: false,
                    message: "volume is healthy".into(),
                },
                Err(e) => csi::VolumeCondition {
                    abnormal: true,
                    message: e.to_string(),
                },
            };
            Ok(csi::ControllerGetVolumeResponse {
                volume: Some(super::volume(&v, backend.topology())),
                status: Some(VolumeStatus {
                    published_node_ids: v.publications.keys().cloned().collect(),
                    volume_condition: Some(condition),
                }),
            })
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        req: Request<csi::ControllerModifyVolumeRequest>,
    ) -> R<csi::ControllerModifyVolumeResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.volume_id.clone();
        run("ControllerModifyVolume", &id, move || {
            ops::modify_volume(
                &d,
                &r.volume_id,
                &sorted(r.mutable_parameters),
                &secrets(r.secrets),
            )?;
            Ok(csi::ControllerModifyVolumeResponse {})
        })
        .await
    }
}
