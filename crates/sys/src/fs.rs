//! Filesystems on block devices: probe, mkfs, online grow, usage, freeze.
//!
//! The rule is "never format when in doubt". `blkid -p` exits 2 both for
//! "no signature" and for "could not look" (missing device, a directory, a
//! 0-byte unconfigured loop device; it even prints nothing for most of
//! these). So [`probe`] first opens the device itself, checks it is a
//! non-empty block device (or image file) whose first block is readable, and
//! reports [`Probe::Blank`] only for exit 2 with an empty stderr.
//!
//! Other kernel quirks: ext4 grows online through the device (`resize2fs`),
//! xfs only through its mount point (`xfs_growfs`); FITHAW on a filesystem
//! that is not frozen fails with EINVAL, which we treat as already thawed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::exec::{Cmd, ExecError, Output};
use crate::ioctl::{self, IntOp};

/// mkfs and resize of a large device can take a while.
const LONG_TIMEOUT: Duration = Duration::from_secs(600);
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A tool failed or is missing (`ExecError::NotFound`).
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{op} {path}: {errno}")]
    Syscall {
        op: &'static str,
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    /// We could not establish what the device holds: do not format it.
    #[error("cannot tell what is on {device}: {reason}")]
    Unprobeable { device: PathBuf, reason: String },
}

fn syscall(op: &'static str, path: &Path) -> impl Fn(Errno) -> FsError {
    let path = path.to_path_buf();
    move |errno| FsError::Syscall {
        op,
        path: path.clone(),
        errno,
    }
}

/// The filesystems haina creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    Ext4,
    Xfs,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported filesystem type {value:?} (supported: ext4, xfs)")]
pub struct UnknownFsType {
    pub value: String,
}

impl FromStr for FsType {
    type Err = UnknownFsType;
    /// "" (the CSI default) and "ext4" are ext4; "xfs" is xfs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(UnknownFsType { value: s.into() }),
        }
    }
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `blkid -p` found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature at all: safe to format.
    Blank,
    /// A filesystem (or other TYPE= signature: swap, LVM2_member, crypto_LUKS...).
    Filesystem {
        fs_type: String,
        uuid: Option<String>,
    },
    /// Something else (a partition table, several signatures): never format.
    Other { what: String },
}

/// Identifies the content of `dev`. Never returns `Blank` unless blkid
/// positively found nothing on a readable, non-empty device.
pub fn probe(dev: &Path) -> Result<Probe, FsError> {
    let unprobeable = |reason: String| FsError::Unprobeable {
        device: dev.into(),
        reason,
    };
    let fd = rustix::fs::open(dev, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(syscall("open", dev))?;
    let stat = rustix::fs::fstat(&fd).map_err(syscall("stat", dev))?;
    let size = match FileType::from_raw_mode(stat.st_mode) {
        FileType::BlockDevice => size_of_fd(&fd, dev)?,
        FileType::RegularFile => stat.st_size as u64,
        other => return Err(unprobeable(format!("not a block device ({other:?})"))),
    };
    if size == 0 {
        return Err(unprobeable(
            "device has size 0 (detached loop device?)".into(),
        ));
    }
    let mut block = [0u8; 4096];
    rustix::io::pread(&fd, &mut block, 0).map_err(syscall("read", dev))?;
    drop(fd);

    let out = Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .ok_codes(&[0, 2, 8])
        .timeout(PROBE_TIMEOUT)
        .run()?;
    let probe = classify_blkid(&out).map_err(unprobeable)?;
    tracing::debug!(device = %dev.display(), ?probe, "probed");
    Ok(probe)
}

/// Interprets `blkid -p -o export`: exit 0 lists signatures, 2 means none,
/// 8 means ambivalent (several). Err(reason) when the answer is unclear.
fn classify_blkid(out: &Output) -> Result<Probe, String> {
    let stderr = out.stderr.trim();
    let field = |key: &str| {
        out.stdout.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        })
    };
    match out.code {
        2 if stderr.is_empty() && out.stdout.trim().is_empty() => Ok(Probe::Blank),
        2 => Err(format!("blkid found nothing but complained: {stderr}")),
        8 => Ok(Probe::Other {
            what: format!("several signatures (blkid: {stderr})"),
        }),
        0 => Ok(match (field("TYPE"), field("PTTYPE")) {
            (Some(fs_type), _) => Probe::Filesystem {
                fs_type,
                uuid: field("UUID"),
            },
            (None, Some(pt)) => Probe::Other {
                what: format!("partition table ({pt})"),
            },
            (None, None) => Probe::Other {
                what: format!("unrecognized signature: {}", out.stdout.trim()),
            },
        }),
        code => Err(format!("blkid exited with {code}")),
    }
}

/// Creates a filesystem on `dev`, overwriting whatever is there: callers
/// [`probe`] first. `extra` goes before the device argument (note: an extra
/// `-E` for ext4 replaces our lazy-init `-E`, as mke2fs keeps the last one).
pub fn mkfs<S: AsRef<str>>(dev: &Path, fs: FsType, extra: &[S]) -> Result<(), FsError> {
    let extra = extra.iter().map(AsRef::as_ref);
    let cmd = match fs {
        FsType::Ext4 => Cmd::new("mkfs.ext4")
            .args(["-F", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .args(extra),
        FsType::Xfs => Cmd::new("mkfs.xfs").args(["-f", "-q"]).args(extra),
    };
    cmd.arg(dev).timeout(LONG_TIMEOUT).run()?;
    tracing::info!(device = %dev.display(), %fs, "created filesystem");
    Ok(())
}

/// [`mkfs`] with a chosen filesystem UUID, so that a later probe can tell
/// the filesystem this mkfs made from any other.
pub fn mkfs_with_uuid<S: AsRef<str>>(
    dev: &Path,
    fs: FsType,
    extra: &[S],
    uuid: &str,
) -> Result<(), FsError> {
    let uuid_args: Vec<String> = match fs {
        FsType::Ext4 => vec!["-U".into(), uuid.into()],
        FsType::Xfs => vec!["-m".into(), format!("uuid={uuid}")],
    };
    let all: Vec<&str> = uuid_args
        .iter()
        .map(String::as_str)
        .chain(extra.iter().map(AsRef::as_ref))
        .collect();
    mkfs(dev, fs, &all)
}

/// Grows the mounted filesystem to fill its (already enlarged) device.
pub fn grow(dev: &Path, mount_point: &Path, fs: FsType) -> Result<(), FsError> {
    let cmd = match fs {
        FsType::Ext4 => Cmd::new("resize2fs").arg(dev),
        FsType::Xfs => Cmd::new("xfs_growfs").arg(mount_point),
    };
    cmd.timeout(LONG_TIMEOUT).run()?;
    tracing::info!(device = %dev.display(), mount_point = %mount_point.display(), %fs, "grew filesystem");
    Ok(())
}

/// Space and inode usage of the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes_total: u64,
    pub bytes_used: u64,
    /// Available to unprivileged users (excludes reserved blocks).
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

pub fn statvfs_usage(path: &Path) -> Result<Usage, FsError> {
    let st = rustix::fs::statvfs(path).map_err(syscall("statvfs", path))?;
    Ok(Usage {
        bytes_total: st.f_blocks * st.f_frsize,
        bytes_used: st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize,
        bytes_available: st.f_bavail * st.f_frsize,
        inodes_total: st.f_files,
        inodes_used: st.f_files.saturating_sub(st.f_ffree),
        inodes_free: st.f_ffree,
    })
}

/// Size of a block device in bytes (BLKGETSIZE64).
pub fn block_device_size(dev: &Path) -> Result<u64, FsError> {
    let fd = rustix::fs::open(dev, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(syscall("open", dev))?;
    size_of_fd(&fd, dev)
}

fn size_of_fd(fd: &std::os::fd::OwnedFd, dev: &Path) -> Result<u64, FsError> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    unsafe { ioctl::with_ptr(fd, ioctl::BLKGETSIZE64, (&raw mut size).cast()) }
        .map_err(syscall("BLKGETSIZE64", dev))?;
    Ok(size)
}

/// Freezes the filesystem mounted at `mount_point` (FIFREEZE): writes block
/// until [`thaw`]. EBUSY: already frozen.
pub fn freeze(mount_point: &Path) -> Result<(), FsError> {
    fs_ioctl(mount_point, IntOp::FiFreeze, "FIFREEZE")?;
    tracing::info!(mount_point = %mount_point.display(), "froze filesystem");
    Ok(())
}

/// Thaws the filesystem (FITHAW); thawing a filesystem that is not frozen is OK.
pub fn thaw(mount_point: &Path) -> Result<(), FsError> {
    match fs_ioctl(mount_point, IntOp::FiThaw, "FITHAW") {
        Err(FsError::Syscall {
            errno: Errno::INVAL,
            ..
        }) => Ok(()),
        other => {
            other?;
            tracing::info!(mount_point = %mount_point.display(), "thawed filesystem");
            Ok(())
        }
    }
}

fn fs_ioctl(mount_point: &Path, op: IntOp, name: &'static str) -> Result<(), FsError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(mount_point, flags, Mode::empty())
        .map_err(syscall("open", mount_point))?;
    ioctl::with_int(&fd, op, 0).map_err(syscall(name, mount_point))?;
    Ok(())
}

/// A frozen filesystem that thaws when dropped (errors are logged), so an
/// early return or panic cannot leave it frozen.
#[must_use = "the filesystem thaws when the guard is dropped"]
#[derive(Debug)]
pub struct FreezeGuard {
    mount_point: PathBuf,
    thawed: bool,
}

impl FreezeGuard {
    pub fn freeze(mount_point: &Path) -> Result<FreezeGuard, FsError> {
        freeze(mount_point)?;
        Ok(FreezeGuard {
            mount_point: mount_point.into(),
            thawed: false,
        })
    }

    /// Thaws now, reporting the error instead of logging it.
    pub fn thaw(mut self) -> Result<(), FsError> {
        self.thawed = true;
        thaw(&self.mount_point)
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if !self.thawed
            && let Err(e) = thaw(&self.mount_point)
        {
            tracing::error!(error = %e, "could not thaw filesystem");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn fs_type_parsing() {
        assert_eq!("".parse(), Ok(FsType::Ext4));
        assert_eq!("ext4".parse(), Ok(FsType::Ext4));
        assert_eq!("xfs".parse(), Ok(FsType::Xfs));
        let err = "btrfs".parse::<FsType>().unwrap_err();
        assert_eq!(err.value, "btrfs");
        assert!(err.to_string().contains("\"btrfs\""));
        assert_eq!(FsType::Xfs.to_string(), "xfs");
    }

    #[test]
    fn blkid_filesystem() {
        let o = out(
            0,
            "DEVNAME=/dev/loop3\nUUID=977e220b-1dae\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n",
            "",
        );
        assert_eq!(
            classify_blkid(&o),
            Ok(Probe::Filesystem {
                fs_type: "ext4".into(),
                uuid: Some("977e220b-1dae".into())
            })
        );
        // PTUUID/PTTYPE must not be mistaken for UUID/TYPE.
        let o = out(0, "DEVNAME=/dev/loop3\nPTUUID=abcd\nPTTYPE=gpt\n", "");
        assert_eq!(
            classify_blkid(&o),
            Ok(Probe::Other {
                what: "partition table (gpt)".into()
            })
        );
        let o = out(0, "TYPE=swap\n", "");
        assert_eq!(
            classify_blkid(&o),
            Ok(Probe::Filesystem {
                fs_type: "swap".into(),
                uuid: None
            })
        );
    }

    #[test]
    fn blkid_blank_only_when_silent() {
        assert_eq!(classify_blkid(&out(2, "", "")), Ok(Probe::Blank));
        assert!(classify_blkid(&out(2, "", "blkid: error: /dev/x: Permission denied")).is_err());
        assert!(classify_blkid(&out(4, "", "")).is_err());
        assert!(matches!(
            classify_blkid(&out(8, "", "ambivalent result")),
            Ok(Probe::Other { .. })
        ));
        assert!(matches!(
            classify_blkid(&out(0, "DEVNAME=/dev/x\nUSAGE=raid\n", "")),
            Ok(Probe::Other { .. })
        ));
    }

    #[test]
    fn probe_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            probe(dir.path()),
            Err(FsError::Unprobeable { .. })
        ));
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(probe(&empty), Err(FsError::Unprobeable { .. })));
        let missing = dir.path().join("missing");
        assert!(matches!(
            probe(&missing),
            Err(FsError::Syscall {
                op: "open",
                errno: Errno::NOENT,
                ..
            })
        ));
    }

    #[test]
    fn probe_of_zeroed_image_file_is_blank() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("zero.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert_eq!(probe(&img).unwrap(), Probe::Blank);
    }
}
