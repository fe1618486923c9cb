//! Readiness: every pool is usable. Probe and `/healthz` both answer from here.

use crate::driver::Driver;
use crate::error::Result;

pub fn check(d: &Driver) -> Result<()> {
    for backend in d.pools.values() {
        backend
            .health()
            .map_err(|e| e.context(format!("pool {}", backend.name())))?;
    }
    Ok(())
}
