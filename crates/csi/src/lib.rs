//! CSI v1.12 wire types and the plumbing to serve or dial them on a unix socket.
//!
//! - [`v1`]: messages, clients and servers generated from `proto/csi.proto`
//!   (package `csi.v1`), the contract every CO and sidecar speaks.
//! - [`endpoint`]: parse `unix:///path` endpoints, bind a listener the way a
//!   CSI plugin must (stale socket removed, mode 0600), and dial a plugin.
//!
//! Nothing in here knows about haina's backends; any CSI plugin or client can
//! use this crate.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

pub mod endpoint;

/// The CSI specification version these types implement.
pub const SPEC_VERSION: &str = "1.12.0";
