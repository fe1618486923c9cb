//! CSI Identity service: who we are, what we can do, are we ready.

use std::sync::Arc;

use haina_csi::v1 as csi;
use haina_csi::v1::identity_server::Identity;
use haina_csi::v1::plugin_capability::{Service, VolumeExpansion, service, volume_expansion};
use tonic::{Request, Response, Status};

use crate::driver::{DRIVER_NAME, Driver};

pub struct IdentityService {
    pub driver: Arc<Driver>,
}

fn service_cap(t: service::Type) -> csi::PluginCapability {
    csi::PluginCapability {
        r#type: Some(csi::plugin_capability::Type::Service(Service {
            r#type: t as i32,
        })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: [("spec".to_string(), haina_csi::SPEC_VERSION.to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let mut caps = vec![service_cap(service::Type::VolumeAccessibilityConstraints)];
        if self.driver.services.controller {
            caps.insert(0, service_cap(service::Type::ControllerService));
            caps.push(service_cap(service::Type::GroupControllerService));
        }
        caps.push(csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                },
            )),
        });
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let d = self.driver.clone();
        crate::grpc::run("Probe", "", move || {
            let ready = crate::health::check(&d).is_ok();
            Ok(csi::ProbeResponse { ready: Some(ready) })
        })
        .await
    }
}
