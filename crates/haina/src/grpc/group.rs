//! CSI GroupController service: parse, call [`crate::group`], convert.
//! Served wherever the Controller service is.

use std::sync::Arc;

use haina_csi::v1 as csi;
use haina_csi::v1::group_controller_server::GroupController;
use haina_csi::v1::group_controller_service_capability::rpc::Type as Rpc;
use tonic::{Request, Response, Status};

use super::{run, secrets, sorted};
use crate::driver::Driver;
use crate::error::Error;
use crate::group::{self as ops, CreateGroupRequest};

pub struct GroupControllerService {
    pub driver: Arc<Driver>,
}

type R<T> = Result<Response<T>, Status>;

const CAPABILITIES: &[Rpc] = &[Rpc::CreateDeleteGetVolumeGroupSnapshot];

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> R<csi::GroupControllerGetCapabilitiesResponse> {
        use csi::group_controller_service_capability::{Rpc as RpcCap, Type};
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| csi::GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(RpcCap { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(csi::GroupControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        req: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> R<csi::CreateVolumeGroupSnapshotResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let name = r.name.clone();
        run("CreateVolumeGroupSnapshot", &name, move || {
            let req = CreateGroupRequest {
                name: r.name,
                source_volume_ids: r.source_volume_ids,
                parameters: sorted(r.parameters),
            };
            let g = ops::create_group_snapshot(&d, req, &secrets(r.secrets))?;
            Ok(csi::CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(super::group_snapshot(&g)),
            })
        })
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        req: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> R<csi::DeleteVolumeGroupSnapshotResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.group_snapshot_id.clone();
        run("DeleteVolumeGroupSnapshot", &id, move || {
            if r.group_snapshot_id.is_empty() {
                return Err(Error::InvalidArgument(
                    "group_snapshot_id is required".into(),
                ));
            }
            ops::delete_group_snapshot(
                &d,
                &r.group_snapshot_id,
                &r.snapshot_ids,
                &secrets(r.secrets),
            )?;
            Ok(csi::DeleteVolumeGroupSnapshotResponse {})
        })
        .await
    }

    async fn get_volume_group_snapshot(
        &self,
        req: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> R<csi::GetVolumeGroupSnapshotResponse> {
        let r = req.into_inner();
        let d = self.driver.clone();
        let id = r.group_snapshot_id.clone();
        run("GetVolumeGroupSnapshot", &id, move || {
            let g = ops::get_group_snapshot(
                &d,
                &r.group_snapshot_id,
                &r.snapshot_ids,
                &secrets(r.secrets),
            )?;
            Ok(csi::GetVolumeGroupSnapshotResponse {
                group_snapshot: Some(super::group_snapshot(&g)),
            })
        })
        .await
    }
}
