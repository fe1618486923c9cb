//! Per-RPC metrics (count, errors by code, latency). Filled in by the
//! metrics endpoint; a no-op until a registry is installed.

use std::time::Duration;

pub fn observe(_method: &'static str, _code: tonic::Code, _elapsed: Duration) {}
