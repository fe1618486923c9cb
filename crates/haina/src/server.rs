//! The CSI server: binds the services a process runs onto one listener
//! (the GroupController goes wherever the Controller does).
//!
//! It takes an already-bound listener and a shutdown future, so tests run
//! the real server on a socket in a temp dir, and `main` passes SIGTERM.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use haina_csi::v1::controller_server::ControllerServer;
use haina_csi::v1::group_controller_server::GroupControllerServer;
use haina_csi::v1::identity_server::IdentityServer;
use haina_csi::v1::node_server::NodeServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::grpc::controller::ControllerService;
use crate::grpc::group::GroupControllerService;
use crate::grpc::identity::IdentityService;
use crate::grpc::node::NodeService;

/// How long open connections may finish their calls after shutdown starts.
const GRACE: Duration = Duration::from_secs(5);

pub async fn serve(
    driver: Arc<Driver>,
    incoming: UnixListenerStream,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let services = driver.services;
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService {
            driver: driver.clone(),
        }))
        .add_optional_service(services.controller.then(|| {
            ControllerServer::new(ControllerService {
                driver: driver.clone(),
            })
        }))
        .add_optional_service(services.controller.then(|| {
            GroupControllerServer::new(GroupControllerService {
                driver: driver.clone(),
            })
        }))
        .add_optional_service(services.node.then(|| {
            NodeServer::new(NodeService {
                driver: driver.clone(),
            })
        }));
    // Graceful shutdown waits for clients to hang up; sidecars never do, so
    // give in-flight calls a grace period and then stop regardless.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let serving = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        r = serving => r.map_err(|e| Error::internal("serving gRPC", e)),
        _ = async { if stopping_rx.await.is_ok() { tokio::time::sleep(GRACE).await } else { std::future::pending::<()>().await } } => {
            tracing::info!("connections still open after the grace period; stopping");
            Ok(())
        }
    }
}
