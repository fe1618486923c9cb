//! `haina rbd-fuse`: serves one RBD image as the file `<mountpoint>/image`
//! over FUSE, for the node plugin's `fuse` mounter ([`crate::attach::fuse`]),
//! which mounts the FUSE filesystem itself, starts this server detached with
//! the FUSE connection's fd (`--fuse-fd`), and puts a loop device on top of
//! the file.
//!
//! - **It holds no mount.** Before anything else (while the process is
//!   still single-threaded, so every later thread inherits it) the server
//!   moves into a private mount namespace ([`isolate`]) and detaches from it
//!   every FUSE mount and every filesystem on a loop, rbd or nbd device. So
//!   it never holds a mount stacked on its own device (an ext4 on the loop
//!   device over its own file): when it is the last process of a namespace,
//!   tearing that namespace down cannot wait on the server itself (which
//!   hung forever in D state), and it never pins another volume's
//!   filesystem. Mounts the plugin makes later do not propagate into it.
//! - It signals readiness with a line `ready` on stdout (a pipe to the
//!   plugin) once the image is open and the FUSE handshake is done; the
//!   plugin never has to stat through the mount to find out.
//!
//! - The cephx key arrives on stdin (a pipe the plugin closes after
//!   writing); stdin is then pointed at /dev/null. Nothing else carries it.
//!   For an encrypted image (`--encryption-format luks1|luks2`) the
//!   passphrase follows the key on the same pipe (after a newline, byte for
//!   byte); the server loads the encryption right after opening the image
//!   (before taking the lock or writing anything) and serves the decrypted
//!   image, whose size is the data area's.
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
//! - The session ends when the FUSE connection goes away (the plugin
//!   unmounted it and the loop device let go of the file, or the connection
//!   was aborted); the server then flushes, drops its record and lock, and
//!   exits.
//!
//! Exit codes: 0 after a clean unmount, 3 if another client holds the
//! exclusive lock, 4 if the image does not exist, 5 if the passphrase does
//! not open the image's header, 1 for anything else.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
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
use crate::attach::fuse::{EXIT_IMAGE_MISSING, EXIT_LOCK_HELD, EXIT_WRONG_PASSPHRASE, IMAGE_FILE};
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
    /// Where the plugin mounted the FUSE filesystem (for identification:
    /// the server does not touch it).
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// The already-mounted FUSE connection (`/dev/fuse`), inherited.
    #[arg(long)]
    pub fuse_fd: i32,
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
    /// FUSE worker threads (requests served in parallel).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// The image is encrypted (luks1, luks2): its passphrase follows the
    /// key on stdin, and the server serves the decrypted image.
    #[arg(long)]
    pub encryption_format: Option<haina_rbd::EncryptionFormat>,
}

/// librbd's answer to a passphrase that does not open the header.
const EPERM: i32 = 1;

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

/// Most bytes read from stdin (a key and a passphrase).
const MAX_SECRETS: usize = 64 * 1024;

/// Reads the plugin's stdin (see `attach::fuse::write_secrets`): the cephx
/// key, then, when `encrypted`, a newline and the passphrase byte for byte.
/// The buffer is allocated once (never regrown, so no stale copy is left
/// in freed memory) and zeroed when dropped.
fn read_secrets(encrypted: bool) -> Result<(Secret, Option<Secret>), BoxError> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(MAX_SECRETS));
    std::io::stdin()
        .take(MAX_SECRETS as u64)
        .read_to_end(&mut buf)?;
    // From here on stdin is /dev/null: the pipe is gone.
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(null.as_fd())?;
    parse_secrets(&buf, encrypted)
}

fn parse_secrets(buf: &[u8], encrypted: bool) -> Result<(Secret, Option<Secret>), BoxError> {
    let (key, rest) = match buf.iter().position(|&b| b == b'\n') {
        Some(i) => (&buf[..i], Some(&buf[i + 1..])),
        None => (buf, None),
    };
    let text = |b: &[u8], what: &str| -> Result<Secret, BoxError> {
        std::str::from_utf8(b)
            .map(Secret::new)
            .map_err(|_| format!("the {what} on stdin is not UTF-8").into())
    };
    let key = text(key, "cephx key")?;
    let key = Secret::new(key.expose().trim());
    if key.is_empty() {
        return Err("no cephx key on stdin".into());
    }
    let passphrase = match (encrypted, rest) {
        (false, None) => None,
        (false, Some(r)) if r.iter().all(u8::is_ascii_whitespace) => None,
        (false, Some(_)) => return Err("a passphrase on stdin, but no --encryption-format".into()),
        (true, Some(p)) if !p.is_empty() => Some(text(p, "passphrase")?),
        (true, _) => return Err("--encryption-format, but no passphrase on stdin".into()),
    };
    Ok((key, passphrase))
}

fn serve(args: Args) -> Result<(), BoxError> {
    let (key, passphrase) = read_secrets(args.encryption_format.is_some())?;
    let spec = crate::attach::image_spec(&args.pool, &args.namespace, &args.image);
    let mut opts = ConnectOpts::new(args.mon_host.clone(), args.user.clone(), key);
    opts.conf_file = args.ceph_conf.clone();
    // The data path never gives up on a slow cluster (like krbd): no
    // operation timeouts. Connecting is bounded (the plugin has just
    // connected with the same credentials, and waits for us).
    opts.timeout = Duration::ZERO;
    opts.connect_timeout = Some(Duration::from_secs(30));
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
    // Unlock first, before the lock or the attach record: a wrong
    // passphrase changes nothing. The passphrase is dropped (zeroed) right
    // after; librbd keeps only the derived key, in memory.
    if let (Some(format), Some(passphrase)) = (args.encryption_format, passphrase) {
        match image.encryption_load(format, &passphrase) {
            Ok(()) => tracing::info!(image = %spec, format = %format, "encryption loaded"),
            Err(e) if e.errno() == Some(EPERM) => {
                return Err(refuse(
                    EXIT_WRONG_PASSPHRASE,
                    format!("the passphrase does not open the {format} header of {spec}"),
                ));
            }
            Err(e) => return Err(format!("loading the {format} encryption of {spec}: {e}").into()),
        }
    }
    if args.mode == OpenMode::Exclusive {
        // A live owner (one that still watches the image) will not let go:
        // fail at once instead of waiting for librbd's lock request to time
        // out. A dead owner's lock is broken (and the owner blocklisted) by
        // librbd during the acquire.
        let owners = image.lock_get_owners().ok().flatten();
        let watchers = image.list_watchers().unwrap_or_default();
        // This node's own previous server (killed, or force-detached) still
        // watches until its watch times out; the plugin starts a server only
        // once the previous one is gone, so its lock is broken (and its
        // client blocklisted) instead of waiting out the watch.
        let own_previous = image
            .metadata_get(&format!("{ATTACH_PREFIX}{}", args.node_id))
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_str::<AttachRecord>(&v).ok())
            .map(|r| r.addr)
            .filter(|a| !a.is_empty());
        if let Some(o) = owners {
            let live: Vec<&String> = o
                .owners
                .iter()
                .filter(|a| watchers.iter().any(|w| &&w.addr == a))
                .collect();
            if !live.is_empty() && live.iter().all(|a| Some(*a) == own_previous.as_ref()) {
                for a in &live {
                    tracing::warn!(image = %spec, owner = %a,
                        "breaking the lock of this node's previous (dead) server");
                    image.lock_break_exclusive(a)?;
                }
            } else if !live.is_empty() {
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
    tracing::info!(image = %spec, ok = result.is_ok(), "FUSE session ended");
    result
}

fn mount_and_serve(args: &Args, spec: &str, image: Arc<Image>) -> Result<(), BoxError> {
    if args.fuse_fd < 3 {
        return Err(format!("--fuse-fd {} is not an inherited descriptor", args.fuse_fd).into());
    }
    // SAFETY: the plugin hands the descriptor over at exec; nothing else in
    // this process owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(args.fuse_fd) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    let fs = ImageFs {
        image,
        read_only: args.mode.read_only(),
        started: SystemTime::now(),
    };
    let mut config = Config::default();
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    // The handshake (FUSE_INIT, queued since the plugin's mount) happens here.
    let session = fuser::Session::from_fd(fs, fd, SessionACL::All, config)?;
    tracing::info!(image = %spec, mountpoint = %args.mountpoint.display(), "FUSE connection ready");
    signal_ready()?;
    session.run()?;
    Ok(())
}

/// Tells the plugin (on stdout, a pipe) that the image is served, then
/// points stdout at /dev/null.
fn signal_ready() -> Result<(), BoxError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(b"ready\n")?;
    out.flush()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(null.as_fd())?;
    Ok(())
}

/// Moves this (still single-threaded) process into a private mount
/// namespace that holds nothing stacked on a FUSE, loop, rbd or nbd device:
/// `unshare(CLONE_NEWNS)`, every mount made private (nothing propagates in
/// or out any more), then every such mount lazily detached (deepest first;
/// `/` never). Called by `main` before the async runtime starts its threads,
/// since a mount namespace belongs to each thread.
pub fn isolate() -> std::io::Result<()> {
    use haina_sys::blockdev::{Kind, identify};
    use rustix::mount::{MountPropagationFlags, UnmountFlags};
    rustix::process::chdir("/")?;
    // SAFETY: only CLONE_NEWNS, in a process with a single thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    let table = haina_sys::mountinfo::MountTable::read().map_err(std::io::Error::other)?;
    for e in table.entries.iter().rev() {
        let stacked = e.fs_type == "fuse"
            || e.fs_type.starts_with("fuse.")
            || identify(e.major, e.minor).is_some_and(|d| {
                matches!(d.kind, Kind::Loop { .. } | Kind::Rbd { .. } | Kind::Nbd)
            });
        if stacked && e.mount_point != std::path::Path::new("/") {
            // EINVAL: already gone with a parent detached before it.
            let _ = rustix::mount::unmount(&e.mount_point, UnmountFlags::DETACH);
        }
    }
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
        // (`sleep-MS`: an open that outlasts the plugin's attach deadline.)
        let _ = crate::failpoint::hit("rbd-fuse-open");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_protocol() {
        let (k, p) = parse_secrets(b"AQkey==", false).unwrap();
        assert_eq!((k.expose(), p.is_none()), ("AQkey==", true));
        let (k, p) = parse_secrets(b"AQkey==\n", false).unwrap();
        assert_eq!((k.expose(), p.is_none()), ("AQkey==", true));
        // The passphrase is everything after the first newline, untouched.
        let (k, p) = parse_secrets(b"AQkey==\n two\nlines \n", true).unwrap();
        assert_eq!(k.expose(), "AQkey==");
        assert_eq!(p.unwrap().expose(), " two\nlines \n");
        assert!(parse_secrets(b"AQkey==", true).is_err());
        assert!(parse_secrets(b"AQkey==\n", true).is_err());
        assert!(parse_secrets(b"AQkey==\npw", false).is_err());
        assert!(parse_secrets(b"\npw", true).is_err());
        // What the plugin writes is what the server reads.
        let key = Secret::new("AQkey==");
        let pass = Secret::new("p\nw");
        let target = crate::attach::Target {
            rados_pool: "p",
            namespace: "",
            image: "i",
            mon_host: "",
            ceph_conf: None,
            user: "u",
            key: &key,
            mode: OpenMode::Exclusive,
            node_id: "n",
            encryption: Some(crate::attach::Unlock {
                volume: "p.v",
                format: haina_rbd::EncryptionFormat::Luks2,
                passphrase: &pass,
            }),
        };
        let mut wire = Vec::new();
        crate::attach::fuse::write_secrets(&mut wire, &target).unwrap();
        let (k, p) = parse_secrets(&wire, true).unwrap();
        assert_eq!((k.expose(), p.unwrap().expose()), ("AQkey==", "p\nw"));
    }
}
