//! [`Host`]: the narrow interface between node logic and the kernel.
//!
//! Everything the node does to a machine — read the mount table, stat a
//! path, mount, unmount, attach and detach loop devices, probe, mkfs, grow,
//! freeze — goes through this trait, so that:
//! - the decisions above it are unit-tested without root against
//!   [`crate::fake::FakeHost`], which records one ordered list of calls and
//!   can fail or hang any of them;
//! - the real implementation, [`RealHost`], puts a deadline on every call
//!   that can stall on a hung data path (see [`crate::deadline`]) in one
//!   place, instead of at a hundred call sites.
//!
//! Block-layer I/O limits (cgroup files, [`crate::throttle`]) go through it
//! too: they are written on RPC paths (NodeStage, ControllerModifyVolume).
//!
//! Paths handed in are already validated and normalised by the caller.
//! Calls that only read sysfs (`identify`, `loops`) never block and carry
//! no deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::blockdev::{self, Device};
use crate::deadline::{self, Deadline, Stalled};
use crate::exec::{Cmd, ExecError};
use crate::fs::{FsError, FsType, Probe, Usage};
use crate::loopdev::{self, AttachOptions, LoopDevice, LoopError};
use crate::mount::{self, MountError};
use crate::mountinfo::{MountInfoError, MountTable};
use crate::superblock::{self, Superblock};
use crate::throttle::{self, DevNum, IoLimits, Throttle, ThrottleError};

/// Why a host call failed. Every variant names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The call did not return within its deadline (a stalled data path).
    #[error(transparent)]
    Stalled(#[from] Stalled),
    #[error("{op} {path}: {errno}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
}

impl HostError {
    /// The errno of a failed system call, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Sys { errno, .. } => Some(*errno),
            Self::Mount(m) => Some(m.errno),
            Self::Loop(LoopError::Device { errno, .. }) => Some(*errno),
            Self::Fs(FsError::Syscall { errno, .. }) => Some(*errno),
            _ => None,
        }
    }

    pub fn is_stalled(&self) -> bool {
        matches!(self, Self::Stalled(_))
    }

    pub(crate) fn sys(op: &'static str, path: &Path) -> impl Fn(Errno) -> HostError {
        let path = path.to_path_buf();
        move |errno| HostError::Sys {
            op,
            path: path.clone(),
            errno,
        }
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// What `lstat` found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    /// A regular file, with its size.
    File(u64),
    Symlink,
    /// A block device node, with its `(major, minor)`.
    BlockDevice(u32, u32),
    Other,
}

/// The kernel, as the node sees it. See the module doc.
pub trait Host: Send + Sync {
    // ---- observe
    /// This process's mount table.
    fn mount_table(&self) -> HostResult<MountTable>;
    /// The block device `major:minor` (sysfs only; never blocks).
    fn identify(&self, major: u32, minor: u32) -> Option<Device>;
    /// What is at `path` without following a final symlink; None if nothing.
    fn lstat(&self, path: &Path) -> HostResult<Option<FileKind>>;
    /// `path` with every symlink resolved (it must exist).
    fn canonicalize(&self, path: &Path) -> HostResult<PathBuf>;
    /// Whether the directory at `path` has no entries.
    fn dir_is_empty(&self, path: &Path) -> HostResult<bool>;
    fn statvfs(&self, path: &Path) -> HostResult<Usage>;
    /// Size of a block device in bytes.
    fn device_size(&self, dev: &Path) -> HostResult<u64>;
    /// What `blkid -p` finds on the device (never `Blank` when in doubt).
    fn probe(&self, dev: &Path) -> HostResult<Probe>;
    /// The ext4/xfs superblock of the device, if it has one.
    fn superblock(&self, dev: &Path) -> HostResult<Option<Superblock>>;
    /// A fresh random UUID (for mkfs).
    fn new_uuid(&self) -> HostResult<String>;
    /// Loop devices with their backing files and whether those were deleted.
    fn loops(&self) -> HostResult<Vec<(LoopDevice, PathBuf, bool)>>;

    // ---- change
    fn create_dir_all(&self, path: &Path) -> HostResult<()>;
    /// Creates an empty file (a raw block publish target) if absent.
    fn create_file(&self, path: &Path) -> HostResult<()>;
    fn remove_dir(&self, path: &Path) -> HostResult<()>;
    fn remove_file(&self, path: &Path) -> HostResult<()>;
    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        flags: MountFlags,
        data: &str,
    ) -> HostResult<()>;
    fn bind(&self, source: &Path, target: &Path) -> HostResult<()>;
    fn remount_bind_readonly(&self, target: &Path) -> HostResult<()>;
    /// Unmounts the top mount at `target` (`lazy`: MNT_DETACH). Never
    /// follows a symlink at `target`.
    fn unmount(&self, target: &Path, lazy: bool) -> HostResult<()>;
    /// Makes a filesystem with the given UUID; `args` are allow-listed.
    fn mkfs(&self, dev: &Path, fs: FsType, args: &[String], uuid: &str) -> HostResult<()>;
    /// `e2fsck -f -p` (exit 0 or 1 is success).
    fn fsck(&self, dev: &Path) -> HostResult<()>;
    /// Grows the filesystem on `dev` (mounted at `mount_point` for xfs).
    fn grow(&self, dev: &Path, mount_point: &Path, fs: FsType) -> HostResult<()>;
    fn freeze(&self, mount_point: &Path) -> HostResult<()>;
    fn thaw(&self, mount_point: &Path) -> HostResult<()>;
    /// The device serving `file` (canonical path), or a newly attached one
    /// (true).
    fn loop_attach(&self, file: &Path, opts: &AttachOptions) -> HostResult<(LoopDevice, bool)>;
    /// Detaches every device serving `file`, deleted or not.
    fn loop_detach(&self, file: &Path) -> HostResult<Vec<LoopDevice>>;
    /// Makes a device see its grown backing file; returns the new size.
    fn loop_refresh(&self, dev: &LoopDevice) -> HostResult<u64>;
    /// Makes a device detach itself on its last close (once mounted).
    fn loop_autoclear(&self, dev: &LoopDevice) -> HostResult<()>;

    // ---- block-layer I/O limits (see [`crate::throttle`])
    /// The limits `target` holds for device `dev`, one entry per cgroup
    /// (all zero where there is no rule).
    fn throttle_get(&self, target: &Throttle, dev: DevNum) -> HostResult<Vec<IoLimits>>;
    /// Sets the limits of `dev` at `target`; all zero removes the rules.
    fn throttle_set(&self, target: &Throttle, dev: DevNum, limits: &IoLimits) -> HostResult<()>;
}

pub type SharedHost = Arc<dyn Host>;

/// The real kernel, with a deadline on every call that can stall.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

fn timed<T: Send + 'static>(
    what: String,
    d: Deadline,
    f: impl FnOnce() -> HostResult<T> + Send + 'static,
) -> HostResult<T> {
    deadline::run(what, d, f)?
}

impl Host for RealHost {
    fn mount_table(&self) -> HostResult<MountTable> {
        timed("read /proc/self/mountinfo".into(), Deadline::Quick, || {
            Ok(MountTable::read()?)
        })
    }

    fn identify(&self, major: u32, minor: u32) -> Option<Device> {
        blockdev::identify(major, minor)
    }

    fn lstat(&self, path: &Path) -> HostResult<Option<FileKind>> {
        let p = path.to_path_buf();
        timed(
            format!("lstat {}", p.display()),
            Deadline::Quick,
            move || match rustix::fs::lstat(&p) {
                Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => FileKind::Dir,
                    FileType::RegularFile => FileKind::File(st.st_size as u64),
                    FileType::Symlink => FileKind::Symlink,
                    FileType::BlockDevice => FileKind::BlockDevice(
                        rustix::fs::major(st.st_rdev),
                        rustix::fs::minor(st.st_rdev),
                    ),
                    _ => FileKind::Other,
                })),
                Err(Errno::NOENT) => Ok(None),
                Err(e) => Err(HostError::sys("lstat", &p)(e)),
            },
        )
    }

    fn canonicalize(&self, path: &Path) -> HostResult<PathBuf> {
        let p = path.to_path_buf();
        timed(
            format!("realpath {}", p.display()),
            Deadline::Quick,
            move || {
                std::fs::canonicalize(&p).map_err(|e| {
                    HostError::sys("realpath", &p)(Errno::from_io_error(&e).unwrap_or(Errno::IO))
                })
            },
        )
    }

    fn dir_is_empty(&self, path: &Path) -> HostResult<bool> {
        let p = path.to_path_buf();
        timed(
            format!("readdir {}", p.display()),
            Deadline::Quick,
            move || {
                let mut rd = std::fs::read_dir(&p).map_err(|e| {
                    HostError::sys("readdir", &p)(Errno::from_io_error(&e).unwrap_or(Errno::IO))
                })?;
                Ok(rd.next().is_none())
            },
        )
    }

    fn statvfs(&self, path: &Path) -> HostResult<Usage> {
        let p = path.to_path_buf();
        timed(
            format!("statvfs {}", p.display()),
            Deadline::Quick,
            move || Ok(crate::fs::statvfs_usage(&p)?),
        )
    }

    fn device_size(&self, dev: &Path) -> HostResult<u64> {
        let p = dev.to_path_buf();
        timed(
            format!("size of {}", p.display()),
            Deadline::Quick,
            move || Ok(crate::fs::block_device_size(&p)?),
        )
    }

    fn probe(&self, dev: &Path) -> HostResult<Probe> {
        let p = dev.to_path_buf();
        timed(
            format!("probe {}", p.display()),
            Deadline::Mount,
            move || Ok(crate::fs::probe(&p)?),
        )
    }

    fn superblock(&self, dev: &Path) -> HostResult<Option<Superblock>> {
        let p = dev.to_path_buf();
        timed(
            format!("read the superblock of {}", p.display()),
            Deadline::Quick,
            move || {
                let fd = rustix::fs::open(&p, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(HostError::sys("open", &p))?;
                let mut buf = vec![0u8; superblock::READ_LEN];
                let n = rustix::io::pread(&fd, &mut buf, 0).map_err(HostError::sys("read", &p))?;
                Ok(superblock::parse(&buf[..n]))
            },
        )
    }

    fn new_uuid(&self) -> HostResult<String> {
        const SRC: &str = "/proc/sys/kernel/random/uuid";
        std::fs::read_to_string(SRC)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                HostError::sys("read", Path::new(SRC))(
                    Errno::from_io_error(&e).unwrap_or(Errno::IO),
                )
            })
    }

    fn loops(&self) -> HostResult<Vec<(LoopDevice, PathBuf, bool)>> {
        Ok(loopdev::list_all()?)
    }

    fn create_dir_all(&self, path: &Path) -> HostResult<()> {
        let p = path.to_path_buf();
        timed(
            format!("mkdir {}", p.display()),
            Deadline::Quick,
            move || {
                std::fs::create_dir_all(&p).map_err(|e| {
                    HostError::sys("mkdir", &p)(Errno::from_io_error(&e).unwrap_or(Errno::IO))
                })
            },
        )
    }

    fn create_file(&self, path: &Path) -> HostResult<()> {
        let p = path.to_path_buf();
        timed(
            format!("create {}", p.display()),
            Deadline::Quick,
            move || {
                rustix::fs::open(
                    &p,
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o640),
                )
                .map(drop)
                .map_err(HostError::sys("create", &p))
            },
        )
    }

    fn remove_dir(&self, path: &Path) -> HostResult<()> {
        let p = path.to_path_buf();
        timed(
            format!("rmdir {}", p.display()),
            Deadline::Quick,
            move || rustix::fs::rmdir(&p).map_err(HostError::sys("rmdir", &p)),
        )
    }

    fn remove_file(&self, path: &Path) -> HostResult<()> {
        let p = path.to_path_buf();
        timed(
            format!("unlink {}", p.display()),
            Deadline::Quick,
            move || rustix::fs::unlink(&p).map_err(HostError::sys("unlink", &p)),
        )
    }

    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        flags: MountFlags,
        data: &str,
    ) -> HostResult<()> {
        let (s, t, f, d) = (
            source.to_path_buf(),
            target.to_path_buf(),
            fs_type.to_string(),
            data.to_string(),
        );
        timed(
            format!("mount {}", t.display()),
            Deadline::Mount,
            move || Ok(mount::mount_fs(&s, &t, &f, flags, &d)?),
        )
    }

    fn bind(&self, source: &Path, target: &Path) -> HostResult<()> {
        let (s, t) = (source.to_path_buf(), target.to_path_buf());
        timed(
            format!("bind {}", t.display()),
            Deadline::Mount,
            move || Ok(mount::bind(&s, &t)?),
        )
    }

    fn remount_bind_readonly(&self, target: &Path) -> HostResult<()> {
        let t = target.to_path_buf();
        timed(
            format!("remount-ro {}", t.display()),
            Deadline::Mount,
            move || Ok(mount::remount_bind_readonly(&t)?),
        )
    }

    fn unmount(&self, target: &Path, lazy: bool) -> HostResult<()> {
        let t = target.to_path_buf();
        let what = format!("umount{} {}", if lazy { " -l" } else { "" }, t.display());
        timed(what, Deadline::Mount, move || {
            if lazy {
                Ok(mount::unmount_lazy(&t)?)
            } else {
                Ok(mount::unmount(&t)?)
            }
        })
    }

    fn mkfs(&self, dev: &Path, fs: FsType, args: &[String], uuid: &str) -> HostResult<()> {
        // The tool is killed at its own timeout; the helper thread also
        // covers one stuck in D state, which no signal ends.
        let (d, a, u) = (dev.to_path_buf(), args.to_vec(), uuid.to_string());
        timed(format!("mkfs {}", d.display()), Deadline::Long, move || {
            Ok(crate::fs::mkfs_with_uuid(&d, fs, &a, &u)?)
        })
    }

    fn fsck(&self, dev: &Path) -> HostResult<()> {
        let d = dev.to_path_buf();
        timed(
            format!("e2fsck {}", d.display()),
            Deadline::Long,
            move || {
                Cmd::new("e2fsck")
                    .args(["-f", "-p"])
                    .arg(&d)
                    .ok_codes(&[0, 1])
                    .timeout(Deadline::Long.duration())
                    .run()?;
                Ok(())
            },
        )
    }

    fn grow(&self, dev: &Path, mount_point: &Path, fs: FsType) -> HostResult<()> {
        let (d, m) = (dev.to_path_buf(), mount_point.to_path_buf());
        timed(format!("grow {}", d.display()), Deadline::Long, move || {
            Ok(crate::fs::grow(&d, &m, fs)?)
        })
    }

    fn freeze(&self, mount_point: &Path) -> HostResult<()> {
        // FIFREEZE first syncs the filesystem, which over a slow data path
        // can outlast the deadline: a freeze that lands after its caller
        // gave up is thawed at once, never left without an owner.
        let (p, q) = (mount_point.to_path_buf(), mount_point.to_path_buf());
        deadline::run_or_undo(
            format!("freeze {}", p.display()),
            Deadline::Mount.duration(),
            move || crate::fs::freeze(&p),
            move |frozen| {
                if frozen.is_ok()
                    && let Err(e) = crate::fs::thaw(&q)
                {
                    tracing::error!(mount_point = %q.display(), error = %e,
                        "thawing a freeze that outlived its caller failed");
                }
            },
        )?
        .map_err(HostError::from)
    }

    fn thaw(&self, mount_point: &Path) -> HostResult<()> {
        let p = mount_point.to_path_buf();
        timed(
            format!("thaw {}", p.display()),
            Deadline::Mount,
            move || Ok(crate::fs::thaw(&p)?),
        )
    }

    fn loop_attach(&self, file: &Path, opts: &AttachOptions) -> HostResult<(LoopDevice, bool)> {
        let (f, o) = (file.to_path_buf(), *opts);
        timed(
            format!("losetup {}", f.display()),
            Deadline::Mount,
            move || Ok(loopdev::attach_or_find(&f, &o)?),
        )
    }

    fn loop_detach(&self, file: &Path) -> HostResult<Vec<LoopDevice>> {
        let f = file.to_path_buf();
        timed(
            format!("losetup -d {}", f.display()),
            Deadline::Mount,
            move || Ok(loopdev::detach_by_backing_file(&f)?),
        )
    }

    fn loop_refresh(&self, dev: &LoopDevice) -> HostResult<u64> {
        let d = *dev;
        timed(
            format!("refresh {}", d.path().display()),
            Deadline::Quick,
            move || Ok(loopdev::refresh_capacity(&d)?),
        )
    }

    fn loop_autoclear(&self, dev: &LoopDevice) -> HostResult<()> {
        let d = *dev;
        timed(
            format!("autoclear {}", d.path().display()),
            Deadline::Quick,
            move || Ok(loopdev::set_autoclear(&d)?),
        )
    }

    fn throttle_get(&self, target: &Throttle, dev: DevNum) -> HostResult<Vec<IoLimits>> {
        let t = target.clone();
        timed(
            format!("read the I/O limits of {dev} ({t})"),
            Deadline::Quick,
            move || Ok(throttle::read(&t, dev)?),
        )
    }

    fn throttle_set(&self, target: &Throttle, dev: DevNum, limits: &IoLimits) -> HostResult<()> {
        let (t, l) = (target.clone(), *limits);
        timed(
            format!("set the I/O limits of {dev} ({t})"),
            Deadline::Quick,
            move || Ok(throttle::write(&t, dev, &l)?),
        )
    }
}
