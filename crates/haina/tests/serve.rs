//! `haina serve` as a process: which services it runs, and a graceful
//! SIGTERM that removes its socket; a restart replaces a stale socket.

mod common;

use common::*;
use haina_csi::v1 as csi;

#[tokio::test(flavor = "multi_thread")]
async fn services_flag_selects_what_is_served() {
    let server = Server::start_with(&[("HAINA_SERVICES", "node")]).await;
    let mut c = server.clients().await;
    let caps = c
        .identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use csi::plugin_capability::{Type, service};
    assert!(!caps.capabilities.iter().any(|cap| matches!(cap.r#type, Some(Type::Service(ref s)) if s.r#type == service::Type::ControllerService as i32)));
    let e = c
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    c.node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap();

    let server = Server::start_with(&[("HAINA_SERVICES", "controller")]).await;
    let mut c = server.clients().await;
    c.controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap();
    let e = c
        .node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_is_graceful_and_restart_replaces_a_stale_socket() {
    let mut server = Server::start().await;
    {
        let mut c = server.clients().await;
        c.identity.probe(csi::ProbeRequest {}).await.unwrap();
    }
    let status = server.stop_status().expect("server was running");
    assert!(status.success(), "exit status {status}");
    assert!(!server.socket.exists(), "socket left behind after SIGTERM");
    // A socket file left by kill -9 is stale: the next start replaces it.
    server.spawn().await;
    server.kill9();
    assert!(server.socket.exists());
    server.spawn().await;
    let mut c = server.clients().await;
    c.identity.probe(csi::ProbeRequest {}).await.unwrap();
}
