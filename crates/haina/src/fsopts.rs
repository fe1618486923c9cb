//! Allow-lists for the mkfs and mount options a request may carry.
//!
//! (Interim version; the full per-filesystem allow-list lands separately.)
//! Anything that names a path or a device, or that can take down the node,
//! is refused with INVALID_ARGUMENT naming the option.

use haina_sys::fs::FsType;

use crate::error::{Error, Result};

const MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "relatime",
    "nodiratime",
    "lazytime",
    "sync",
    "dirsync",
    "defaults",
    "discard",
    "nodiscard",
    "nouuid",
];

/// Checks mount options (`field` names them in errors).
pub fn mount_options(_fs: FsType, field: &str, opts: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for o in opts.iter().flat_map(|o| o.split(',')).map(str::trim) {
        if o.is_empty() {
            continue;
        }
        if !MOUNT_FLAGS.contains(&o) {
            return Err(Error::InvalidArgument(format!(
                "{field}: mount option {o:?} is not allowed"
            )));
        }
        out.push(o.to_string());
    }
    Ok(out)
}

/// Checks mkfs options; none are allowed in this interim version.
pub fn mkfs_args(_fs: FsType, field: &str, raw: &str) -> Result<Vec<String>> {
    match raw.split_whitespace().next() {
        None => Ok(Vec::new()),
        Some(o) => Err(Error::InvalidArgument(format!(
            "{field}: mkfs option {o:?} is not allowed"
        ))),
    }
}
