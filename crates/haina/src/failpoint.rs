//! Named failure points for crash and error-path tests.
//!
//! `HAINA_FAILPOINTS="snapshot-copy=error,create-image=abort"` makes the
//! named points fail with an INTERNAL error, or kill the process on the spot
//! (`abort`: no destructors, no cleanup — what `kill -9` does). `sleep-MS`
//! stalls the call, to hold a volume busy. `pause` is a handshake for tests
//! that must act at an exact point: the call creates
//! `$HAINA_FAILPOINT_DIR/<name>.paused` and waits (at most 2 minutes) until
//! the test removes it. Unset, each point costs one lookup in an empty list.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};

fn points() -> &'static [(String, String)] {
    static POINTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("HAINA_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    })
}

/// Passes unless the point `name` is armed.
pub fn hit(name: &str) -> Result<()> {
    let Some((_, action)) = points().iter().find(|(k, _)| k == name) else {
        return Ok(());
    };
    match action.as_str() {
        "abort" => {
            tracing::warn!(failpoint = name, "failpoint: aborting the process");
            std::process::abort();
        }
        "error" => Err(Error::internal(
            format!("failpoint {name}"),
            std::io::Error::other("injected failure"),
        )),
        "pause" => {
            pause(name);
            Ok(())
        }
        other => {
            if let Some(ms) = other.strip_prefix("sleep-").and_then(|m| m.parse().ok()) {
                std::thread::sleep(Duration::from_millis(ms));
            }
            Ok(())
        }
    }
}

/// Waits until the test removes `<name>.paused` (see the module doc).
fn pause(name: &str) {
    let dir = std::env::var_os("HAINA_FAILPOINT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let flag = dir.join(format!("{name}.paused"));
    if let Err(e) = std::fs::write(&flag, b"") {
        tracing::warn!(failpoint = name, error = %e, "failpoint: cannot pause");
        return;
    }
    tracing::warn!(failpoint = name, flag = %flag.display(), "failpoint: paused");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while flag.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&flag);
}
