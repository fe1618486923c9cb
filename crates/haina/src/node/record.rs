//! The node's own record of a volume it staged: where, how, and the UUID
//! it gives the filesystem it makes.
//!
//! `<data-dir>/node/volumes/<volume-id>.json`, written (temp + fsync +
//! rename + fsync dir) before the first change a stage makes, removed by a
//! completed unstage. It is a hint, never proof — every decision checks the
//! kernel — but it answers three questions the kernel cannot:
//! - which of the identical mounts of a volume's filesystem is the staging
//!   mount (unpublish must never take it down);
//! - whether a volume is staged somewhere else already (stage refuses a
//!   second staging path, whose unstages would wait on each other);
//! - whether a filesystem on the device is one this node started making:
//!   mkfs is given `mkfs_uuid`, and only a filesystem with that UUID that is
//!   still pristine (never mounted read-write, or its mkfs unfinished) may
//!   be made again after a crash. A filesystem someone else made — another
//!   node of a shared pool, after this one died mid-mkfs — is never touched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::driver::Driver;
use crate::error::Result;
use crate::ids::VolumeId;
use crate::state;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The staging path, resolved (as mountinfo shows it).
    pub staging: PathBuf,
    /// Staged as a raw block device (bound at `<staging>/<volume-id>`).
    pub block: bool,
    /// The UUID this node gives a filesystem it makes on the volume.
    pub mkfs_uuid: String,
}

fn path(d: &Driver, id: &VolumeId) -> PathBuf {
    d.data_dir
        .join("node")
        .join("volumes")
        .join(format!("{id}.json"))
}

pub fn read(d: &Driver, id: &VolumeId) -> Result<Option<Staged>> {
    Ok(state::read(&path(d, id))?)
}

/// Writes the record durably (it is relied on after a crash).
pub fn write(d: &Driver, id: &VolumeId, rec: &Staged) -> Result<()> {
    Ok(state::write(&path(d, id), rec)?)
}

/// The volumes this node has staged (or is staging): one record each.
pub fn staged(d: &Driver) -> Result<Vec<String>> {
    Ok(state::list(&d.data_dir.join("node").join("volumes"))?)
}

/// Removes the record (unlink only: works on a full disk).
pub fn remove(d: &Driver, id: &VolumeId) -> Result<()> {
    Ok(state::remove(&path(d, id))?)
}

/// Where a block volume's device node is bound when staged at `staging`.
pub fn block_staging_file(staging: &Path, id: &VolumeId) -> PathBuf {
    staging.join(id.to_string())
}
