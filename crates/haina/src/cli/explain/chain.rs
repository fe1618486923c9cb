//! Kernel facts about the links of a volume's chain, read fresh from sysfs
//! and the mount table: which block device a mount sits on, what backs that
//! device (an image file for a loop device, a Ceph image for krbd, a
//! process for nbd) and so which mounter serves it.
//!
//! Shared by `haina explain` and `haina demo`, which both print the chain
//! as measured, never as assumed. Kernel quirks handled: a loop device's
//! `loop/` directory exists only while it is configured; a deleted backing
//! file reads `path (deleted)`; a bind mount of a device node (a raw block
//! volume) is a `devtmpfs` mount whose root names the node, so its
//! `major:minor` are devtmpfs's, not the device's.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use haina_sys::mountinfo::{MountEntry, MountTable};
use serde::Serialize;

/// A block device, as sysfs names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// `/dev/loop3`.
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// Bytes, from sysfs.
    pub size_bytes: Option<u64>,
}

impl Device {
    /// The kernel's name: `loop3`, `rbd0`, `nbd1`.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    fn sys(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }
}

/// The block device `major:minor`, if sysfs knows it.
pub fn device(major: u32, minor: u32) -> Option<Device> {
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let name = fs::read_link(&sys).ok()?.file_name()?.to_str()?.to_string();
    let size_bytes = fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512);
    Some(Device {
        path: PathBuf::from("/dev").join(name),
        major,
        minor,
        size_bytes,
    })
}

/// The device a device node path (`/dev/loop3`) names.
pub fn device_at(path: &Path) -> Option<Device> {
    let st = rustix::fs::stat(path).ok()?;
    device(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
}

/// The device node a raw-block bind mount shows (`/dev/loop3` for a
/// devtmpfs mount with root `/loop3`), if `e` is one.
pub fn bound_node(e: &MountEntry) -> Option<PathBuf> {
    (e.fs_type == "devtmpfs" && e.root != Path::new("/"))
        .then(|| Path::new("/dev").join(e.root.strip_prefix("/").unwrap_or(&e.root)))
}

/// The block device under a mount: the filesystem's device, or the node a
/// raw-block bind exposes.
pub fn device_of(e: &MountEntry) -> Option<Device> {
    match bound_node(e) {
        Some(node) => device_at(&node),
        None => device(e.major, e.minor),
    }
}

/// What serves a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backing {
    /// A loop device over an image file.
    File {
        path: PathBuf,
        /// The file was deleted while attached: the device serves an orphan.
        deleted: bool,
        direct_io: bool,
        read_only: bool,
    },
    /// A loop device that serves nothing any more (detached while in use).
    Detached,
    /// A kernel RBD mapping of a Ceph image.
    Rbd { pool: String, image: String },
    /// An NBD device and the process serving it (e.g. `rbd-nbd`).
    Nbd { pid: Option<u32>, command: String },
    /// Anything else (a disk partition, device-mapper, ...).
    Other,
}

/// What backs `dev`, from sysfs.
pub fn backing(dev: &Device) -> Backing {
    let name = dev.name();
    if name.starts_with("loop") {
        let loop_dir = dev.sys().join("loop");
        let Ok(raw) = fs::read(loop_dir.join("backing_file")) else {
            return Backing::Detached;
        };
        let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
        if raw.is_empty() {
            return Backing::Detached;
        }
        let (raw, deleted) = match raw.strip_suffix(b" (deleted)") {
            Some(r) => (r, true),
            None => (raw, false),
        };
        let flag =
            |attr: &str| fs::read_to_string(loop_dir.join(attr)).is_ok_and(|s| s.trim() == "1");
        return Backing::File {
            path: PathBuf::from(OsStr::from_bytes(raw)),
            deleted,
            direct_io: flag("dio"),
            read_only: fs::read_to_string(dev.sys().join("ro")).is_ok_and(|s| s.trim() == "1"),
        };
    }
    if let Some(id) = name.strip_prefix("rbd") {
        let dir = Path::new("/sys/bus/rbd/devices").join(id);
        let read = |f: &str| fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
        if let (Ok(pool), Ok(image)) = (read("pool"), read("name")) {
            return Backing::Rbd { pool, image };
        }
    }
    if name.starts_with("nbd") {
        let pid = fs::read_to_string(dev.sys().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let command = pid
            .and_then(|p: u32| fs::read(format!("/proc/{p}/cmdline")).ok())
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        return Backing::Nbd { pid, command };
    }
    Backing::Other
}

/// Who serves the device: `loop`, `fuse` (a loop over a file on a FUSE
/// mount, haina's rbd-fuse), `krbd`, `nbd`, or `-`.
pub fn mounter(table: &MountTable, b: &Backing) -> &'static str {
    match b {
        Backing::File { path, .. } => match fuse_mount_of(table, path) {
            Some(_) => "fuse",
            None => "loop",
        },
        Backing::Detached => "loop",
        Backing::Rbd { .. } => "krbd",
        Backing::Nbd { .. } => "nbd",
        Backing::Other => "-",
    }
}

/// The FUSE mount a loop device's image file lies on, if any.
pub fn fuse_mount_of<'t>(table: &'t MountTable, path: &Path) -> Option<&'t MountEntry> {
    containing_mount(table, path).filter(|m| m.fs_type.starts_with("fuse"))
}

/// The mount a path lies on: the longest mount point that is a prefix.
pub fn containing_mount<'t>(table: &'t MountTable, path: &Path) -> Option<&'t MountEntry> {
    table
        .entries
        .iter()
        .rev()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.components().count())
}

/// The last link, in words: `loop (direct-io) over /x.img`,
/// `krbd over ceph image kube/img`.
pub fn describe_backing(table: &MountTable, b: &Backing) -> String {
    match b {
        Backing::File {
            path,
            deleted,
            direct_io,
            read_only,
        } => {
            let mut flags = Vec::new();
            if *direct_io {
                flags.push("direct-io");
            }
            if *read_only {
                flags.push("read-only");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(", "))
            };
            let mut s = format!(
                "loop{flags} over {}{}",
                path.display(),
                if *deleted { " (deleted)" } else { "" }
            );
            // haina's rbd-fuse: the image file is a FUSE view of an RBD image.
            if let Some(m) = fuse_mount_of(table, path) {
                s.push_str(&format!(" <- {} mount of {}", m.fs_type, m.source));
            }
            s
        }
        Backing::Detached => "loop over nothing (detached)".into(),
        Backing::Rbd { pool, image } => format!("krbd over Ceph image {pool}/{image}"),
        Backing::Nbd { pid, command } => match pid {
            Some(p) => format!("nbd served by pid {p} ({command})"),
            None => "nbd (not connected)".into(),
        },
        Backing::Other => "a block device".into(),
    }
}

/// Mount entries at paths under `root` (for leak checks).
pub fn mounts_under<'t>(table: &'t MountTable, root: &Path) -> Vec<&'t MountEntry> {
    table
        .entries
        .iter()
        .filter(|e| e.mount_point.starts_with(root))
        .collect()
}

/// Loop devices whose backing file lies under `root` (deleted or not).
pub fn loops_under(root: &Path) -> Vec<(Device, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Some(dev) = fs::read_to_string(e.path().join("dev")).ok().and_then(|s| {
            let (a, b) = s.trim().split_once(':')?;
            device(a.parse().ok()?, b.parse().ok()?)
        }) else {
            continue;
        };
        if let Backing::File { path, .. } = backing(&dev)
            && path.starts_with(root)
        {
            out.push((dev, path));
        }
    }
    out.sort_by_key(|(d, _)| d.minor);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_block_binds_name_their_node() {
        let t = MountTable::parse(
            "\
30 22 0:6 /loop4 /pods/p/dev rw,nosuid - devtmpfs udev rw
31 22 7:3 / /stage rw - ext4 /dev/loop3 rw
32 22 0:50 / /mnt/fuse rw - fuse.haina-rbd haina rw
",
        )
        .unwrap();
        assert_eq!(bound_node(&t.entries[0]), Some(PathBuf::from("/dev/loop4")));
        assert_eq!(bound_node(&t.entries[1]), None);
        let fuse_file = Backing::File {
            path: "/mnt/fuse/img".into(),
            deleted: false,
            direct_io: false,
            read_only: false,
        };
        assert_eq!(mounter(&t, &fuse_file), "fuse");
        assert_eq!(
            describe_backing(&t, &fuse_file),
            "loop over /mnt/fuse/img <- fuse.haina-rbd mount of haina"
        );
        let plain = Backing::File {
            path: "/stage/x.img".into(),
            deleted: true,
            direct_io: true,
            read_only: false,
        };
        assert_eq!(mounter(&t, &plain), "loop");
        assert_eq!(
            describe_backing(&t, &plain),
            "loop (direct-io) over /stage/x.img (deleted)"
        );
        assert_eq!(
            describe_backing(
                &t,
                &Backing::Rbd {
                    pool: "kube".into(),
                    image: "csi-vol-1".into()
                }
            ),
            "krbd over Ceph image kube/csi-vol-1"
        );
    }
}
