//! Loop devices, driven through ioctls on `/dev/loop-control` and
//! `/dev/loopN` (not the `losetup` binary), and observed through sysfs.
//!
//! The kernel is the record: which image a device serves is read from
//! `/sys/block/loopN/loop/backing_file`, so a restarted node plugin re-adopts
//! its attachments with [`attach_or_find`]. Kernel quirks handled here:
//! - `LOOP_CTL_GET_FREE` only *names* a free device (the same one to every
//!   caller until it is bound); another process can bind it before our
//!   `LOOP_CONFIGURE`, which then fails with EBUSY. GET_FREE + CONFIGURE
//!   are serialized within this process (two ioctls under a lock; the
//!   backing file is opened before, outside it); against other processes we
//!   retry with a fresh index after a short, growing pause.
//! - Without udev the `/dev/loopN` node may not exist yet: we `mknod` it with
//!   the numbers from `/sys/block/loopN/dev`.
//! - `LOOP_CLR_FD` never fails on a busy device: it sets autoclear and the
//!   device is torn down on its last close. A device that is still mounted or
//!   held open elsewhere therefore stays attached after [`detach`] returns
//!   (we log it; check [`LoopDevice::backing_file`] if it matters).
//! - A device number is reused as soon as it is free, so a stale
//!   [`LoopDevice`] may name someone else's device: [`detach_by_backing_file`]
//!   re-checks the backing file while holding the device open.
//! - A backing file deleted while attached shows as `path (deleted)` in
//!   sysfs. [`LoopDevice::backing_file`] strips the suffix;
//!   [`find_by_backing_file`] never matches such a device (it serves a file
//!   that is no longer at that path), [`find_any_by_backing_file`] and
//!   [`detach_by_backing_file`] do, so a teardown still finds it.
//! - Lookups compare backing paths as strings and never `stat` a backing
//!   file: one over a stalled FUSE server would hang the lookup.
//! - Some filesystems refuse `O_DIRECT`; we fall back to buffered I/O, and
//!   the kernel itself may decline direct I/O (e.g. misaligned backing file).

use std::ffi::c_void;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::ioctl::{self, IntOp};

const LOOP_CONTROL: &str = "/dev/loop-control";
/// How many times we retry when another process grabs "our" free device.
const ATTACH_ATTEMPTS: u32 = 16;

/// How long [`detach`] waits for the kernel to finish tearing a device down.
const DETACH_SETTLE: Duration = Duration::from_secs(2);

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// Serializes GET_FREE + CONFIGURE in this process (two ioctls, no file I/O).
static ATTACH_LOCK: Mutex<()> = Mutex::new(());

fn attach_lock() -> std::sync::MutexGuard<'static, ()> {
    ATTACH_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The image file could not be opened or resolved (ENOENT: it is gone).
    #[error("backing file {path}: {source}")]
    Backing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Every free device we were offered was taken by someone else first.
    #[error("no free loop device for {path}: lost the race {attempts} times")]
    NoFreeDevice { path: PathBuf, attempts: u32 },
    /// The kernel has no loop device to give (LOOP_CTL_GET_FREE failed: all
    /// in use and no more can be made, e.g. `max_loop` reached).
    #[error("no free loop device for {path}: LOOP_CTL_GET_FREE: {errno}")]
    NoDeviceLeft {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    /// An open, mknod or ioctl on a loop device (or loop-control) failed.
    #[error("{op} on {device}: {errno}")]
    Device {
        op: &'static str,
        device: PathBuf,
        #[source]
        errno: Errno,
    },
    /// A sysfs attribute could not be read or parsed.
    #[error("read {path}: {source}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How to attach an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Bypass the page cache of the backing file (LO_FLAGS_DIRECT_IO).
    pub direct_io: bool,
    pub read_only: bool,
}

/// `/dev/loopN`. Holds no fd: every operation opens the node afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoopDevice {
    pub index: u32,
}

impl LoopDevice {
    /// Parses `/dev/loopN` (e.g. a mount source); None for anything else.
    pub fn from_path(path: &Path) -> Option<LoopDevice> {
        let name = path.to_str()?.strip_prefix("/dev/loop")?;
        parse_index(name).map(|index| LoopDevice { index })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.index))
    }

    pub fn sys_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/block/loop{}", self.index))
    }

    /// The image this device serves; None if unconfigured (or removed).
    /// A " (deleted)" suffix is stripped.
    pub fn backing_file(&self) -> Option<PathBuf> {
        self.backing().map(|(path, _deleted)| path)
    }

    /// (path, deleted) from sysfs.
    fn backing(&self) -> Option<(PathBuf, bool)> {
        let raw = fs::read(self.sys_dir().join("loop/backing_file")).ok()?;
        parse_backing_file(&raw)
    }

    /// Current size in bytes (0 when unconfigured).
    pub fn size_bytes(&self) -> Result<u64, LoopError> {
        let sectors: u64 = self.read_attr("size")?;
        Ok(sectors * 512)
    }

    /// Whether the kernel is actually doing direct I/O to the backing file.
    pub fn direct_io(&self) -> bool {
        self.read_attr::<u8>("loop/dio").is_ok_and(|v| v == 1)
    }

    /// Whether the device detaches itself on its last close.
    pub fn autoclear(&self) -> bool {
        self.read_attr::<u8>("loop/autoclear").is_ok_and(|v| v == 1)
    }

    pub fn read_only(&self) -> bool {
        self.read_attr::<u8>("ro").is_ok_and(|v| v == 1)
    }

    /// (major, minor) of the block device.
    pub fn dev_t(&self) -> Result<(u32, u32), LoopError> {
        let path = self.sys_dir().join("dev");
        let text = fs::read_to_string(&path).map_err(|source| LoopError::Sysfs {
            path: path.clone(),
            source,
        })?;
        parse_major_minor(&text).ok_or_else(|| LoopError::Sysfs {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, format!("bad dev {text:?}")),
        })
    }

    fn read_attr<T: std::str::FromStr>(&self, name: &str) -> Result<T, LoopError> {
        let path = self.sys_dir().join(name);
        let text = fs::read_to_string(&path).map_err(|source| LoopError::Sysfs {
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| LoopError::Sysfs {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, format!("bad value {text:?}")),
        })
    }

    /// Opens `/dev/loopN` read-write, creating the node if udev did not.
    fn open(&self) -> Result<OwnedFd, LoopError> {
        let path = self.path();
        let open = || rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
        match open() {
            Err(Errno::NOENT) => {
                let (major, minor) = self.dev_t()?;
                let dev = rustix::fs::makedev(major, minor);
                match rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    FileType::BlockDevice,
                    Mode::from_raw_mode(0o660),
                    dev,
                ) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(self.err("mknod", errno)),
                }
                open().map_err(|errno| self.err("open", errno))
            }
            other => other.map_err(|errno| self.err("open", errno)),
        }
    }

    fn err(&self, op: &'static str, errno: Errno) -> LoopError {
        LoopError::Device {
            op,
            device: self.path(),
            errno,
        }
    }
}

/// All configured loop devices with their backing files, by index.
pub fn list() -> Result<Vec<(LoopDevice, PathBuf)>, LoopError> {
    Ok(configured()?
        .into_iter()
        .map(|(dev, path, _deleted)| (dev, path))
        .collect())
}

/// All configured loop devices with their backing files and whether those
/// were deleted while attached, by index. Reads sysfs only.
pub fn list_all() -> Result<Vec<(LoopDevice, PathBuf, bool)>, LoopError> {
    configured()
}

fn configured() -> Result<Vec<(LoopDevice, PathBuf, bool)>, LoopError> {
    let sys_err = |source| LoopError::Sysfs {
        path: "/sys/block".into(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/block").map_err(sys_err)? {
        let entry = entry.map_err(sys_err)?;
        let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(parse_index)
        else {
            continue;
        };
        let dev = LoopDevice { index };
        if let Some((path, deleted)) = dev.backing() {
            out.push((dev, path, deleted));
        }
    }
    out.sort();
    Ok(out)
}

/// Loop devices currently serving the file at `path` (lowest index first);
/// devices whose backing file was deleted are left out.
///
/// `path` must be the canonical path the kernel shows (callers build their
/// image paths from canonical directories). It is compared as a string and
/// nothing is `stat`ed: neither `path` nor any other device's backing file,
/// so one device over a stalled data path (a stopped FUSE server) cannot
/// hang a lookup for another.
pub fn find_by_backing_file(path: &Path) -> Result<Vec<LoopDevice>, LoopError> {
    Ok(find_any_by_backing_file(path)?
        .into_iter()
        .filter(|(_, deleted)| !deleted)
        .map(|(dev, _)| dev)
        .collect())
}

/// Like [`find_by_backing_file`], but also devices whose backing file at
/// `path` was deleted while attached (the bool is true for those).
pub fn find_any_by_backing_file(path: &Path) -> Result<Vec<(LoopDevice, bool)>, LoopError> {
    let wanted = absolute(path);
    Ok(configured()?
        .into_iter()
        .filter(|(_, backing, _)| *backing == wanted)
        .map(|(dev, _, deleted)| (dev, deleted))
        .collect())
}

/// `path` made absolute against the current directory, without touching
/// the filesystem.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    }
}

/// Attaches `path` to a free loop device. Not idempotent: see [`attach_or_find`].
pub fn attach(path: &Path, opts: &AttachOptions) -> Result<LoopDevice, LoopError> {
    let path = absolute(path);
    let backing = open_backing(&path, opts)?;
    configure(&path, &backing, opts)
}

/// Binds the opened backing file to a free device. Only the two ioctls
/// (GET_FREE + CONFIGURE) run under the process-wide lock: no file I/O
/// does, so a backing file on a stalled data path cannot block other
/// attaches.
fn configure(
    path: &Path,
    backing: &OwnedFd,
    opts: &AttachOptions,
) -> Result<LoopDevice, LoopError> {
    let path = path.to_path_buf();
    let ctl = rustix::fs::open(LOOP_CONTROL, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|errno| LoopError::Device {
            op: "open",
            device: LOOP_CONTROL.into(),
            errno,
        })?;

    let mut flags = 0;
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if rustix::fs::fcntl_getfl(backing).is_ok_and(|f| f.contains(OFlags::DIRECT)) {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let mut config = LoopConfig::new(backing, &path, flags);

    for attempt in 1..=ATTACH_ATTEMPTS {
        let claimed = {
            let _guard = attach_lock();
            let index = ioctl::with_int(&ctl, IntOp::LoopCtlGetFree, 0).map_err(|errno| {
                LoopError::NoDeviceLeft {
                    path: path.clone(),
                    errno,
                }
            })?;
            let dev = LoopDevice {
                index: index as u32,
            };
            let fd = dev.open()?;
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is.
            let res = unsafe {
                ioctl::with_ptr(
                    &fd,
                    ioctl::LOOP_CONFIGURE,
                    (&raw mut config).cast::<c_void>(),
                )
            };
            (dev, res)
        };
        match claimed {
            (dev, Ok(_)) => {
                if opts.direct_io && !dev.direct_io() {
                    tracing::warn!(device = %dev.path().display(), backing = %path.display(),
                        "kernel declined direct I/O; loop device uses buffered I/O");
                }
                tracing::info!(device = %dev.path().display(), backing = %path.display(),
                    ?opts, "attached loop device");
                return Ok(dev);
            }
            (dev, Err(Errno::BUSY)) => {
                tracing::debug!(device = %dev.path().display(), attempt,
                    "loop device taken concurrently; retrying");
                std::thread::sleep(Duration::from_millis(u64::from(attempt) * 5));
            }
            (dev, Err(errno)) => return Err(dev.err("LOOP_CONFIGURE", errno)),
        }
    }
    Err(LoopError::NoFreeDevice {
        path,
        attempts: ATTACH_ATTEMPTS,
    })
}

/// Opens the image with the access the options ask for; O_DIRECT falls back
/// to buffered when the filesystem refuses it (EINVAL).
fn open_backing(path: &Path, opts: &AttachOptions) -> Result<OwnedFd, LoopError> {
    let mut flags = OFlags::CLOEXEC;
    flags |= if opts.read_only {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    let open = |flags| rustix::fs::open(path, flags, Mode::empty());
    let res = if opts.direct_io {
        match open(flags | OFlags::DIRECT) {
            Err(Errno::INVAL) => {
                tracing::warn!(backing = %path.display(),
                    "filesystem refuses O_DIRECT; attaching with buffered I/O");
                open(flags)
            }
            other => other,
        }
    } else {
        open(flags)
    };
    res.map_err(|errno| LoopError::Backing {
        path: path.into(),
        source: errno.into(),
    })
}

/// Returns the device already serving `path`, or attaches a new one.
/// The bool is true when a device was newly attached. If several devices
/// serve the file, the lowest is returned and a warning logged. Calls for
/// the same path within this process are serialized (so two callers
/// cannot both attach); calls for different paths never wait on each
/// other. The backing file is opened before any device is claimed.
pub fn attach_or_find(path: &Path, opts: &AttachOptions) -> Result<(LoopDevice, bool), LoopError> {
    let path = absolute(path);
    let _busy = PathGuard::claim(&path);

    let found = find_by_backing_file(&path)?;
    let Some(&dev) = found.first() else {
        let backing = open_backing(&path, opts)?;
        return configure(&path, &backing, opts).map(|dev| (dev, true));
    };
    if found.len() > 1 {
        tracing::warn!(backing = %path.display(), devices = ?found,
            "image is attached to several loop devices; using the lowest");
    }
    if dev.read_only() != opts.read_only {
        tracing::warn!(device = %dev.path().display(), backing = %path.display(),
            wanted_read_only = opts.read_only, "re-adopted loop device differs in read-only mode");
    }
    tracing::debug!(device = %dev.path().display(), backing = %path.display(),
        "re-adopted existing loop device");
    Ok((dev, false))
}

/// Paths being attached in this process right now.
static ATTACHING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static ATTACHED: std::sync::Condvar = std::sync::Condvar::new();

/// Holds one path for find-then-attach; released on drop.
struct PathGuard(PathBuf);

impl PathGuard {
    fn claim(path: &Path) -> Self {
        let mut busy = ATTACHING.lock().unwrap_or_else(|e| e.into_inner());
        while busy.iter().any(|p| p == path) {
            busy = ATTACHED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        busy.push(path.to_path_buf());
        PathGuard(path.to_path_buf())
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        let mut busy = ATTACHING.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|p| *p != self.0);
        ATTACHED.notify_all();
    }
}

/// Detaches the device; an already unconfigured device is success.
/// If the device is still open elsewhere (mounted, held by a process), the
/// kernel only marks it autoclear and it stays attached until that last
/// close; this is logged, not an error.
///
/// A `LoopDevice` is only an index: once detached, the number can be reused
/// for another image at any moment. Call this only for a device you know is
/// yours right now; to release an image, prefer [`detach_by_backing_file`].
pub fn detach(dev: &LoopDevice) -> Result<(), LoopError> {
    clear(dev, |_| true).map(|_| ())
}

/// Detaches every loop device serving the file at `path` — including one
/// whose file at that path was deleted behind the driver's back — and
/// returns them; none (already detached) is success. `path` is compared as
/// a string (see [`find_by_backing_file`]). Each device is re-checked while
/// we hold it open, which pins its binding, so a device that was meanwhile
/// reused for another image is left alone.
pub fn detach_by_backing_file(path: &Path) -> Result<Vec<LoopDevice>, LoopError> {
    let wanted = absolute(path);
    let mut detached = Vec::new();
    for (dev, _) in find_any_by_backing_file(&wanted)? {
        if clear(&dev, |d| {
            d.backing_file().as_deref() == Some(wanted.as_path())
        })? {
            detached.push(dev);
        }
    }
    Ok(detached)
}

/// LOOP_CLR_FD if the device is bound and `still_ours` holds while we keep
/// it open. Returns whether we cleared it.
fn clear(dev: &LoopDevice, still_ours: impl Fn(&LoopDevice) -> bool) -> Result<bool, LoopError> {
    if dev.backing_file().is_none() {
        return Ok(false);
    }
    {
        let fd = match dev.open() {
            Err(LoopError::Device {
                errno: Errno::NXIO, ..
            }) => return Ok(false),
            other => other?,
        };
        // While we hold an fd nobody can tear the device down (their CLR_FD
        // only sets autoclear), so this check cannot go stale.
        if !still_ours(dev) {
            return Ok(false);
        }
        match ioctl::with_int(&fd, IntOp::LoopClrFd, 0) {
            Ok(_) => {}
            Err(Errno::NXIO) => return Ok(false),
            Err(errno) => return Err(dev.err("LOOP_CLR_FD", errno)),
        }
        // The teardown runs when this, the last, fd closes.
    }
    let deadline = Instant::now() + DETACH_SETTLE;
    while dev.backing_file().is_some() {
        if Instant::now() >= deadline {
            tracing::warn!(device = %dev.path().display(),
                "loop device still open elsewhere; it will detach on its last close");
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(device = %dev.path().display(), "detached loop device");
    Ok(true)
}

/// Marks the device to detach itself on its last close (LO_FLAGS_AUTOCLEAR).
///
/// Set once a filesystem is mounted from the device (it holds the device
/// open): from then on, however that mount goes away — an unmount, or the
/// death of a mount namespace holding it — the device goes with it, so it
/// can never be orphaned over a file no path names any more. Setting it
/// before the mount would detach the device as soon as this call's own fd
/// closes. Calls LOOP_GET_STATUS64 (which asks the backing filesystem for
/// the file's attributes) then LOOP_SET_STATUS64 with the flag added.
pub fn set_autoclear(dev: &LoopDevice) -> Result<(), LoopError> {
    let fd = dev.open()?;
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`.
    unsafe {
        ioctl::with_ptr(
            &fd,
            ioctl::LOOP_GET_STATUS64,
            (&raw mut info).cast::<c_void>(),
        )
    }
    .map_err(|errno| dev.err("LOOP_GET_STATUS64", errno))?;
    if info.lo_flags & LO_FLAGS_AUTOCLEAR != 0 {
        return Ok(());
    }
    info.lo_flags |= LO_FLAGS_AUTOCLEAR;
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`.
    unsafe {
        ioctl::with_ptr(
            &fd,
            ioctl::LOOP_SET_STATUS64,
            (&raw mut info).cast::<c_void>(),
        )
    }
    .map_err(|errno| dev.err("LOOP_SET_STATUS64", errno))?;
    tracing::debug!(device = %dev.path().display(), "loop device set to detach on last close");
    Ok(())
}

/// Makes the device pick up a grown backing file; returns the new size.
pub fn refresh_capacity(dev: &LoopDevice) -> Result<u64, LoopError> {
    let fd = dev.open()?;
    ioctl::with_int(&fd, IntOp::LoopSetCapacity, 0)
        .map_err(|errno| dev.err("LOOP_SET_CAPACITY", errno))?;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    unsafe { ioctl::with_ptr(&fd, ioctl::BLKGETSIZE64, (&raw mut size).cast()) }
        .map_err(|errno| dev.err("BLKGETSIZE64", errno))?;
    Ok(size)
}

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h (LOOP_CONFIGURE, Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    /// Logical block size of the loop device. Always 512: left to the
    /// kernel (0) it follows the backing file's direct-I/O alignment, which
    /// changes with the file (a reflinked copy on xfs needs 4096), and a
    /// filesystem made on 512-byte sectors then refuses to mount.
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn zeroed() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

impl LoopConfig {
    fn new(backing: &OwnedFd, path: &Path, flags: u32) -> Self {
        let mut name = [0u8; LO_NAME_SIZE];
        let bytes = path.as_os_str().as_bytes();
        // The kernel NUL-terminates at byte 63: longer names are truncated.
        let n = bytes.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 512,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        }
    }
}

/// "12" → 12; rejects "", "+1", "01x", "12p1".
fn parse_index(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Content of `loop/backing_file` → (path, deleted). None when empty.
fn parse_backing_file(raw: &[u8]) -> Option<(PathBuf, bool)> {
    crate::blockdev::parse_backing(raw)
}

/// "7:3\n" → (7, 3).
fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths() {
        let dev = LoopDevice { index: 12 };
        assert_eq!(dev.path(), Path::new("/dev/loop12"));
        assert_eq!(dev.sys_dir(), Path::new("/sys/block/loop12"));
        assert_eq!(LoopDevice::from_path(Path::new("/dev/loop12")), Some(dev));
        for bad in [
            "/dev/loop",
            "/dev/loop-control",
            "/dev/loop1p2",
            "/dev/sda",
            "loop1",
        ] {
            assert_eq!(LoopDevice::from_path(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn backing_file_parsing() {
        assert_eq!(
            parse_backing_file(b"/var/lib/haina/v 1.img\n"),
            Some((PathBuf::from("/var/lib/haina/v 1.img"), false))
        );
        assert_eq!(
            parse_backing_file(b"/img/a.img (deleted)\n"),
            Some((PathBuf::from("/img/a.img"), true))
        );
        assert_eq!(parse_backing_file(b"\n"), None);
        assert_eq!(parse_backing_file(b""), None);
    }

    #[test]
    fn sysfs_numbers() {
        assert_eq!(parse_major_minor("7:3\n"), Some((7, 3)));
        assert_eq!(parse_major_minor("259:0"), Some((259, 0)));
        assert_eq!(parse_major_minor("7"), None);
        assert_eq!(parse_index("0"), Some(0));
        assert_eq!(parse_index("+1"), None);
        assert_eq!(parse_index("1p2"), None);
    }

    #[test]
    fn long_names_are_truncated_and_terminated() {
        let fd = rustix::fs::open("/dev/null", OFlags::RDONLY, Mode::empty()).unwrap();
        let long = PathBuf::from(format!("/{}", "x".repeat(100)));
        let cfg = LoopConfig::new(&fd, &long, LO_FLAGS_DIRECT_IO);
        assert_eq!(cfg.info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(&cfg.info.lo_file_name[..2], b"/x");
        assert_eq!(cfg.info.lo_flags, LO_FLAGS_DIRECT_IO);
        assert_eq!(cfg.fd, fd.as_raw_fd() as u32);
    }
}
