//! haina: a CSI block-storage driver.
//!
//! Layout (the mount chain and who owns each link is in docs/architecture.md):
//!
//! | module | owns |
//! |---|---|
//! | [`grpc`] | the CSI services: request validation, conversion, error mapping, the RPC log |
//! | [`controller`] | Controller logic: sizing, idempotency, publish conflicts, topology, paging |
//! | [`group`] | GroupController logic: group snapshots' validation, idempotency and locks |
//! | [`node`] | Node logic: stage (attach, format, mount), publish (bind), stats, expansion |
//! | [`backend`] | the `Backend` trait and one file per pool kind (`local`, `rbd`) |
//! | [`attach`] | node-side attach of RBD images: `fuse` (our own FUSE server + loop), `krbd`, `nbd` |
//! | [`driver`] | configured pools, node identity and the in-flight guard |
//! | [`ids`] | validated IDs and paths: nothing unvalidated reaches the filesystem |
//! | [`limiter`] | one operation per volume in flight (ABORTED otherwise) |
//! | [`state`] | crash-safe per-object records (temp + fsync + rename) |
//! | [`volume`] | shared domain types: capabilities, records, capacity rules |
//! | [`config`] | the pool config file |
//! | [`fsopts`] | the allow-lists for mkfs and mount options from requests |
//! | [`qos`] | the mutable parameters (QoS limits): parsing, merging, pool support |
//! | [`server`] | the gRPC server on a bound listener with a shutdown future |
//! | [`metrics`], [`health`] | Prometheus metrics, `/healthz`, and the readiness Probe answers from |
//! | [`failpoint`] | named failure points (`HAINA_FAILPOINTS`) for crash and error-path tests |
//! | [`cli`] | `ctl`, `demo`, `explain`, `flexvolume`, `bench`, and the `rbd-fuse` server |
//! | `haina_sys` (crate) | loop devices, mountinfo, mount, mkfs/blkid/resize, subprocesses |
//! | `haina_rbd` (crate) | librados/librbd, loaded at run time |
//! | `haina_csi` (crate) | the CSI v1.12 wire types and unix-socket endpoints |
//!
//! Error policy: one [`error::Error`] with a variant per CSI outcome a CO acts
//! on, converted to a gRPC status in exactly one place.

pub mod attach;
pub mod backend;
pub mod cli;
pub mod config;
pub mod controller;
pub mod driver;
pub mod error;
pub mod failpoint;
pub mod fsopts;
pub mod group;
pub mod grpc;
pub mod health;
pub mod ids;
pub mod limiter;
pub mod metrics;
pub mod node;
pub mod qos;
pub mod server;
pub mod state;
pub mod volume;
