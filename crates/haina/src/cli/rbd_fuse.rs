//! `haina rbd-fuse`: serves one RBD image as the file `<mountpoint>/image`
//! over FUSE, for the node plugin's `fuse` mounter ([`crate::attach::fuse`]),
//! which starts it detached and puts a loop device on top of the file.
//!
//! - The cephx key arrives on stdin (a pipe the plugin closes after
//!   writing); stdin is then pointed at /dev/null. Nothing else carries it.
//! - The image is opened once and used by every FUSE worker thread
//!   (`--threads`, each with its own cloned `/dev/fuse` fd), with
//!   `FOPEN_DIRECT_IO` + parallel direct writes and 1 MiB requests, so the
//!   loop device's direct, asynchronous I/O reaches librbd in parallel.
//! - `--mode exclusive` takes the image's exclusive lock for the whole
//!   session (a second writer elsewhere cannot write); `shared` leaves lock
//!   hand-over to librbd; `ro` opens read-only (no watch).
//! - While serving, a read-write server records `haina.attach.<node>` (its
//!   client id and address) in the image metadata, which the controller's
//!   fencing reads.
//! - The session ends when the mount is unmounted; the server then
//!   flushes, drops its record and lock, and exits.
//!
//! Exit codes: 0 after a clean unmount, 3 if another client holds the
//! exclusive lock, 4 if the image does not exist, 1 for anything else.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, WriteFlags,
};
use haina_rbd::{Cluster, ConnectOpts, Image, Secret};

use crate::attach::OpenMode;
use crate::attach::fuse::{EXIT_IMAGE_MISSING, EXIT_LOCK_HELD, FS_TYPE, IMAGE_FILE, SOURCE_PREFIX};
use crate::backend::rbd::meta::{ATTACH_PREFIX, AttachRecord};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// RADOS pool of the image.
    #[arg(long)]
    pub pool: String,
    /// RBD namespace of the image (empty: the pool's default namespace).
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// RBD image name.
    #[arg(long)]
    pub image: String,
    /// Where to mount (an existing directory).
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Monitors (`mon_host`); may be empty with --ceph-conf.
    #[arg(long, default_value = "")]
    pub mon_host: String,
    #[arg(long)]
    pub ceph_conf: Option<PathBuf>,
    /// cephx user (the key is read from stdin).
    #[arg(long)]
    pub user: String,
    /// This node's ID, for the attach record.
    #[arg(long)]
    pub node_id: String,
    /// ro, shared or exclusive.
    #[arg(long, default_value = "exclusive")]
    pub mode: OpenMode,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// FUSE worker threads (requests served in parallel).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let result = tokio::task::spawn_blocking(move || serve(args))
        .await
        .map_err(|e| -> Box<dyn std::error::Error> { Box::new(e) })?;
    // `serve` has returned, so the image is closed (its watch removed):
    // a refused server must not leave a watch behind that every librbd
    // notification on the image then waits for until it times out.
    match result {
        Ok(()) => Ok(()),
        Err(e) => match e.downcast::<Refused>() {
            Ok(r) => {
                tracing::error!("{}", r.message);
                std::process::exit(r.code)
            }
            Err(e) => Err(e),
        },
    }
}

/// A refusal with its own exit code (the plugin maps it to a CSI code).
#[derive(Debug)]
struct Refused {
    code: i32,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

fn refuse(code: i32, message: String) -> BoxError {
    Box::new(Refused { code, message })
}

fn read_key() -> Result<Secret, BoxError> {
    let mut key = String::new();
    std::io::stdin().read_to_string(&mut key)?;
    // From here on stdin is /dev/null: the pipe is gone.
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(null.as_fd())?;
    let key = Secret::new(key.trim());
    if key.is_empty() {
        return Err("no cephx key on stdin".into());
    }
    Ok(key)
}

fn serve(args: Args) -> Result<(), BoxError> {
    let key = read_key()?;
    let spec = crate::attach::image_spec(&args.pool, &args.namespace, &args.image);
    let mut opts = ConnectOpts::new(args.mon_host.clone(), args.user.clone(), key);
    opts.conf_file = args.ceph_conf.clone();
    // The data path never gives up on a slow cluster (like krbd): no
    // operation timeouts, librados' own connect timeout.
    opts.timeout = Duration::ZERO;
    let cluster = Cluster::connect(&opts)?;
    let io = cluster.ioctx_in(&args.pool, &args.namespace)?;
    let opened = if args.mode.read_only() {
        io.open_read_only(&args.image)
    } else {
        io.open(&args.image)
    };
    let image = match opened {
        Ok(i) => i,
        Err(e) if e.is_not_found() => return Err(refuse(EXIT_IMAGE_MISSING, e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if args.mode == OpenMode::Exclusive {
        // A live owner (one that still watches the image) will not let go:
        // fail at once instead of waiting for librbd's lock request to time
        // out. A dead owner's lock is broken (and the owner blocklisted) by
        // librbd during the acquire.
        let owners = image.lock_get_owners().ok().flatten();
        let watchers = image.list_watchers().unwrap_or_default();
        if let Some(o) = owners {
            let live: Vec<&String> = o
                .owners
                .iter()
                .filter(|a| watchers.iter().any(|w| &&w.addr == a))
                .collect();
            if !live.is_empty() {
                return Err(refuse(
                    EXIT_LOCK_HELD,
                    format!(
                        "the exclusive lock of {spec} is held by live client(s) {live:?}; held by [{}]",
                        o.owners.join(", ")
                    ),
                ));
            }
        }
        if let Err(e) = image.lock_acquire_exclusive() {
            let owners = image
                .lock_get_owners()
                .ok()
                .flatten()
                .map(|o| o.owners.join(", "))
                .unwrap_or_default();
            return Err(refuse(
                EXIT_LOCK_HELD,
                format!("cannot take the exclusive lock of {spec} ({e}); held by [{owners}]"),
            ));
        }
    }
    let client = cluster.instance_id();
    let record_key = format!("{ATTACH_PREFIX}{}", args.node_id);
    if !args.mode.read_only() {
        let addr = image
            .list_watchers()
            .ok()
            .and_then(|ws| ws.into_iter().find(|w| w.id as u64 == client))
            .map(|w| w.addr)
            .unwrap_or_default();
        let record = AttachRecord {
            client,
            addr: addr.clone(),
            mode: args.mode.as_str().into(),
            since: crate::volume::now_unix().0 as u64,
        };
        image.metadata_set(&record_key, &serde_json::to_string(&record)?)?;
        tracing::info!(image = %spec, client, addr = %addr, mode = args.mode.as_str(), "image open");
    }
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))?;
    }
    let image = Arc::new(image);
    let result = mount_and_serve(&args, &spec, image.clone());
    // Unmounted (or failed): make everything durable, then let go.
    if let Err(e) = image.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    if !args.mode.read_only()
        && let Err(e) = image.metadata_remove(&record_key)
    {
        tracing::warn!(error = %e, "removing the attach record");
    }
    if args.mode == OpenMode::Exclusive {
        let _ = image.lock_release();
    }
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!(image = %spec, ok = result.is_ok(), "FUSE session ended");
    result
}

fn mount_and_serve(args: &Args, spec: &str, image: Arc<Image>) -> Result<(), BoxError> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::MountFlags;
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    );
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if args.mode.read_only() {
        flags |= MountFlags::RDONLY;
    }
    let source = format!("{SOURCE_PREFIX}{spec}");
    let data = std::ffi::CString::new(data)?;
    rustix::mount::mount(
        source.as_str(),
        &args.mountpoint,
        FS_TYPE,
        flags,
        Some(data.as_c_str()),
    )?;
    tracing::info!(mountpoint = %args.mountpoint.display(), "FUSE mounted");
    let fs = ImageFs {
        image,
        read_only: args.mode.read_only(),
        started: SystemTime::now(),
    };
    let mut config = Config::default();
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::from_fd(fs, fd, SessionACL::All, config)?;
    session.run()?;
    Ok(())
}

const ROOT: INodeNo = INodeNo::ROOT;
const FILE: INodeNo = INodeNo(2);
/// Largest read or write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;

/// One image as one file. Every method may run on any worker thread at
/// once: librbd's image handle is thread-safe.
struct ImageFs {
    image: Arc<Image>,
    read_only: bool,
    started: SystemTime,
}

fn rbd_errno(e: &haina_rbd::Error) -> Errno {
    Errno::from_i32(e.errno().unwrap_or(libc_eio()))
}

const fn libc_eio() -> i32 {
    5
}

impl ImageFs {
    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else if ino == FILE {
            let size = self.image.size().map_err(|e| {
                tracing::error!(error = %e, "reading the image size");
                rbd_errno(&e)
            })?;
            let perm = if self.read_only { 0o400 } else { 0o600 };
            (FileType::RegularFile, perm, size, 1)
        } else {
            return Err(Errno::ENOENT);
        };
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != ROOT || name != IMAGE_FILE {
            return reply.error(Errno::ENOENT);
        }
        match self.attr(FILE) {
            Ok(a) => reply.entry(&Duration::ZERO, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // No attribute caching: a stat always shows the image's current
        // size, which is how a resize reaches the loop device.
        match self.attr(ino) {
            Ok(a) => reply.attr(&Duration::ZERO, &a),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The image is resized by the controller, never through the file.
        if size.is_some() {
            return reply.error(Errno::EPERM);
        }
        match self.attr(ino) {
            Ok(a) => reply.attr(&Duration::ZERO, &a),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size as usize];
        match self.image.read_at(offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => {
                tracing::error!(offset, size, error = %e, "read failed");
                reply.error(rbd_errno(&e))
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        match self.image.write_at(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                tracing::error!(offset, len = data.len(), error = %e, "write failed");
                reply.error(rbd_errno(&e))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.image.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!(error = %e, "flush failed");
                reply.error(rbd_errno(&e))
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, IMAGE_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let size = self.image.size().unwrap_or(0);
        reply.statfs(size / 4096, 0, 0, 1, 0, 4096, 255, 4096);
    }
}
