//! Readiness: every pool is usable. Probe and `/healthz` both answer from here.
//!
//! A pool's health check may talk to a remote store (an RBD pool probes its
//! monitors), so each runs under a deadline: a hung cluster makes Probe
//! answer "not ready" in bounded time, never hang it. Pools cache their own
//! answers briefly, so frequent Probes stay cheap.

use std::time::Duration;

use crate::driver::Driver;
use crate::error::{Error, Result};

/// How long one pool's health check may take before it counts as failed.
const DEADLINE: Duration = Duration::from_secs(5);

pub fn check(d: &Driver) -> Result<()> {
    for backend in d.pools.values() {
        let b = backend.clone();
        let what = format!("health check of pool {}", backend.name());
        let answer = haina_sys::deadline::run_for(what, DEADLINE, move || b.health())
            .map_err(|stalled| Error::Unavailable(stalled.to_string()))
            .and_then(|r| r);
        answer.map_err(|e| e.context(format!("pool {}", backend.name())))?;
    }
    Ok(())
}
