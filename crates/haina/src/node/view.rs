//! What the kernel holds of one volume on this node: the [`View`] every
//! node decision is made from.
//!
//! A mount is the volume's only when the kernel says so: its device number
//! names a block device (sysfs) that the volume's pool recognises as its own
//! ([`Backend::owns_device`]: a loop device over its image — even one
//! deleted behind the driver's back — or its krbd mapping). A raw block
//! bind shows devtmpfs's device number in mountinfo, so for those the bound
//! node itself is looked at (`lstat` gives the device number it names).
//! Anything else — a tmpfs, another volume, `/` — is foreign, and no
//! decision ever unmounts a foreign mount.
//!
//! Nothing here stats a FUSE mount or reads through a volume's data path:
//! anonymous devices (FUSE, tmpfs, overlay) are skipped by number.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use haina_sys::blockdev::Device;
use haina_sys::host::{FileKind, Host};
use haina_sys::mountinfo::{MountEntry, MountTable};

use crate::backend::Backend;
use crate::error::Result;
use crate::ids::VolumeId;

/// One mount of the volume, as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub mount_point: PathBuf,
    /// A bind of the device node (raw block), not a filesystem mount.
    pub devnode: bool,
    /// Read-only at this mount.
    pub read_only: bool,
    /// The filesystem turned itself read-only under a read-write mount
    /// (ext4/xfs do that after I/O errors).
    pub fs_errors: bool,
    /// `/dev/loopN`, `/dev/rbdN`...
    pub device: PathBuf,
    pub fs_type: String,
}

/// The top mount at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtPath {
    Nothing,
    Ours(Held),
    /// Something the volume does not own, described for messages.
    Foreign(String),
}

/// The mount table, and which of its mounts are the volume's.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub table: MountTable,
    /// Mount IDs of the volume's mounts, with what they are.
    held: Vec<(u32, Held)>,
}

impl View {
    /// Builds a view by hand (decision tests).
    pub fn from_parts(table: MountTable, held: Vec<(u32, Held)>) -> Self {
        Self { table, held }
    }

    /// Every mount of the volume, in mount-table order.
    pub fn held(&self) -> impl Iterator<Item = &Held> {
        self.held.iter().map(|(_, h)| h)
    }

    /// The top mount at `path`.
    pub fn at(&self, path: &Path) -> AtPath {
        match self.table.at(path) {
            None => AtPath::Nothing,
            Some(e) => match self.held.iter().find(|(id, _)| *id == e.mount_id) {
                Some((_, h)) => AtPath::Ours(h.clone()),
                None => AtPath::Foreign(describe(e)),
            },
        }
    }

    /// Whether a mount-table entry is one of the volume's mounts.
    pub fn is_ours(&self, e: &MountEntry) -> bool {
        self.held.iter().any(|(id, _)| *id == e.mount_id)
    }

    /// The volume's mounts other than at `except`.
    pub fn elsewhere<'a>(&'a self, except: &'a [&'a Path]) -> impl Iterator<Item = &'a Held> {
        self.held()
            .filter(move |h| !except.iter().any(|p| h.mount_point == *p))
    }
}

/// `source (fs_type, major:minor)`, for messages.
pub fn describe(e: &MountEntry) -> String {
    format!(
        "{} ({}, {}:{})",
        if e.source.is_empty() { "-" } else { &e.source },
        e.fs_type,
        e.major,
        e.minor
    )
}

/// Reads the mount table and finds the volume's mounts in it.
pub fn observe(host: &dyn Host, backend: &dyn Backend, id: &VolumeId) -> Result<View> {
    let table = host.mount_table()?;
    let mut known: HashMap<(u32, u32), Option<Device>> = HashMap::new();
    let mut identify = |major, minor| {
        known
            .entry((major, minor))
            .or_insert_with(|| host.identify(major, minor))
            .clone()
    };
    let mut held = Vec::new();
    for e in &table.entries {
        let devnode =
            e.root != Path::new("/") && matches!(e.fs_type.as_str(), "devtmpfs" | "tmpfs");
        let dev = if devnode {
            // A bind of a device node shows devtmpfs's number: the node
            // itself says which device. One odd mount elsewhere on the node
            // (unreadable, stalled) is not ours, and must not fail the call.
            match host.lstat(&e.mount_point) {
                Ok(Some(FileKind::BlockDevice(major, minor))) => identify(major, minor),
                Ok(_) => None,
                Err(err) => {
                    tracing::warn!(mount_point = %e.mount_point.display(), error = %err,
                        "cannot tell what a device-node bind serves; taking it as foreign");
                    None
                }
            }
        } else if e.major != 0 {
            identify(e.major, e.minor)
        } else {
            None // anonymous: tmpfs, FUSE, overlay... never a volume's device
        };
        let Some(dev) = dev.filter(|d| backend.owns_device(id, d)) else {
            continue;
        };
        let read_only = e.mount_options.iter().any(|o| o == "ro");
        let super_ro = e.super_options.iter().any(|o| o == "ro");
        held.push((
            e.mount_id,
            Held {
                mount_point: e.mount_point.clone(),
                devnode,
                read_only,
                fs_errors: !devnode && super_ro && !read_only,
                device: dev.path(),
                fs_type: e.fs_type.clone(),
            },
        ));
    }
    Ok(View { table, held })
}
