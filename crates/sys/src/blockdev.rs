//! What the kernel says a block device is, from sysfs alone.
//!
//! Destructive steps (unmount, detach) act only on what the kernel shows a
//! volume owns. A mount entry gives a device number; [`identify`] turns it
//! into the device's name and what backs it: a loop device's backing file
//! (even one deleted behind the driver's back, which sysfs shows as
//! `path (deleted)`), a krbd mapping's pool, namespace and image. Nothing
//! here opens the device or touches its backing file, so a stalled data
//! path cannot hang it.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One block device, by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
    /// Kernel name: `loop3`, `rbd0`, `nbd1`, `vda`...
    pub name: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Loop {
        /// None: the loop device is not configured.
        backing: Option<PathBuf>,
        /// The backing file was unlinked while attached.
        deleted: bool,
    },
    Rbd {
        pool: String,
        namespace: String,
        image: String,
    },
    Nbd,
    Other,
}

impl Device {
    /// `/dev/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// The loop device's backing file, deleted or not.
    pub fn loop_backing(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Loop {
                backing: Some(b), ..
            } => Some(b),
            _ => None,
        }
    }
}

/// Identifies the block device `major:minor`; None when it is not a block
/// device the kernel knows (e.g. `0:52`, an anonymous device of tmpfs/FUSE).
pub fn identify(major: u32, minor: u32) -> Option<Device> {
    identify_in(Path::new("/sys"), major, minor)
}

fn identify_in(sys: &Path, major: u32, minor: u32) -> Option<Device> {
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let target = fs::read_link(&link).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    let dir = sys.join("dev/block").join(&target);
    let read = |rel: &str| fs::read(dir.join(rel)).ok();
    let kind = if name.starts_with("loop") {
        let (backing, deleted) = read("loop/backing_file")
            .and_then(|raw| parse_backing(&raw))
            .map_or((None, false), |(p, d)| (Some(p), d));
        Kind::Loop { backing, deleted }
    } else if let Some(id) = name.strip_prefix("rbd") {
        let dev = sys.join("bus/rbd/devices").join(id);
        let attr = |f: &str| {
            fs::read_to_string(dev.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Kind::Rbd {
            pool: attr("pool"),
            namespace: attr("pool_ns"),
            image: attr("name"),
        }
    } else if name.starts_with("nbd") {
        Kind::Nbd
    } else {
        Kind::Other
    };
    Some(Device {
        major,
        minor,
        name,
        kind,
    })
}

/// `loop/backing_file` content → (path, deleted). None when empty.
pub fn parse_backing(raw: &[u8]) -> Option<(PathBuf, bool)> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    let (raw, deleted) = match raw.strip_suffix(b" (deleted)") {
        Some(stripped) => (stripped, true),
        None => (raw, false),
    };
    Some((PathBuf::from(std::ffi::OsStr::from_bytes(raw)), deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_loop_rbd_and_others_from_a_sysfs_tree() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let mk = |dev: &str, target: &str| {
            std::fs::create_dir_all(sys.join("devices/virtual/block").join(target)).unwrap();
            std::fs::create_dir_all(sys.join("dev/block")).unwrap();
            std::os::unix::fs::symlink(
                format!("../../devices/virtual/block/{target}"),
                sys.join("dev/block").join(dev),
            )
            .unwrap();
        };
        mk("7:3", "loop3");
        std::fs::create_dir_all(sys.join("devices/virtual/block/loop3/loop")).unwrap();
        std::fs::write(
            sys.join("devices/virtual/block/loop3/loop/backing_file"),
            "/pool/v 1.img (deleted)\n",
        )
        .unwrap();
        mk("7:4", "loop4");
        mk("251:0", "rbd0");
        let rbd = sys.join("bus/rbd/devices/0");
        std::fs::create_dir_all(&rbd).unwrap();
        for (f, v) in [
            ("pool", "kube\n"),
            ("pool_ns", "ns1\n"),
            ("name", "csi-vol-x\n"),
        ] {
            std::fs::write(rbd.join(f), v).unwrap();
        }
        mk("254:0", "vda");

        let d = identify_in(sys, 7, 3).unwrap();
        assert_eq!(d.name, "loop3");
        assert_eq!(d.path(), Path::new("/dev/loop3"));
        assert_eq!(
            d.kind,
            Kind::Loop {
                backing: Some("/pool/v 1.img".into()),
                deleted: true
            }
        );
        assert_eq!(d.loop_backing(), Some(Path::new("/pool/v 1.img")));
        assert_eq!(
            identify_in(sys, 7, 4).unwrap().kind,
            Kind::Loop {
                backing: None,
                deleted: false
            }
        );
        assert_eq!(
            identify_in(sys, 251, 0).unwrap().kind,
            Kind::Rbd {
                pool: "kube".into(),
                namespace: "ns1".into(),
                image: "csi-vol-x".into()
            }
        );
        assert_eq!(identify_in(sys, 254, 0).unwrap().kind, Kind::Other);
        assert_eq!(identify_in(sys, 0, 52), None);
    }

    #[test]
    fn the_real_root_device_is_known() {
        let st = rustix::fs::stat("/").unwrap();
        let (ma, mi) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        // "/" may sit on a virtual device (overlay in a container): then None.
        if let Some(d) = identify(ma, mi) {
            assert!(!d.name.is_empty());
        }
    }
}
