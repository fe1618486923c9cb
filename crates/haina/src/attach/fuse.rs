//! The `fuse` mounter: a detached `haina rbd-fuse` server exposes the image
//! as the file `<mountpoint>/image` over FUSE (librbd underneath), and a
//! loop device with direct I/O turns that file into a block device.
//!
//! Layout under the pool's node directory (`<data-dir>/rbd/<pool>/`):
//!
//! ```text
//! <object>/        the FUSE mount point (fs type fuse.haina-rbd)
//! <object>/image   the image, as one file
//! <object>.log     the server's log
//! <object>.pid     the server's pid (a hint, checked against /proc)
//! ```
//!
//! The plugin opens `/dev/fuse` and makes the FUSE mount itself (in its own
//! mount namespace), then hands the connection's fd to the server, which it
//! starts detached: its own session, the key (and, for an encrypted volume,
//! the passphrase) on a pipe on stdin (never argv, env or a file), a
//! readiness line on a pipe on stdout. The server loads the encryption and
//! serves the decrypted image; a wrong passphrase makes it exit before
//! anything is attached. The server moves
//! into a private mount namespace holding no mount stacked on any FUSE,
//! loop, rbd or nbd device (see `cli::rbd_fuse`), so it is never the one
//! that holds the ext4 on its own device, and it outlives a plugin restart.
//!
//! The kernel is the record of what is attached: the FUSE mount in
//! mountinfo and the loop device whose sysfs `backing_file` is
//! `<object>/image`. Both are compared as strings, so a dead or stopped
//! server cannot hang the lookups. The only calls that go through the FUSE
//! mount (the loop device's open, a stat for a resize or a health check)
//! run under a deadline ([`haina_sys::deadline`]).
//!
//! Detach is the reverse: loop device, then FUSE mount (the connection
//! ends, the server flushes, releases its lock and exits), then the files.
//! [`health`] tells a dead or stopped server (from `/proc/<pid>/stat`, which
//! never blocks) or a stalled data path; [`force_detach`] tears such an
//! attachment down without waiting on it: it aborts the FUSE connection
//! through fusectl (`/sys/fs/fuse/connections/<minor>/abort`), so stuck I/O
//! fails, detaches the mount lazily and the loop device, and kills the
//! server. Data the server had not yet written is lost: it is the last
//! resort for a data path that is already dead or stuck.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use haina_sys::deadline::{self, Deadline};
use haina_sys::loopdev::{self, AttachOptions, LoopDevice};
use haina_sys::mount;
use haina_sys::mountinfo::MountTable;

use super::{AttachError, Target, log_tail};
use crate::backend::Attachment;

/// The fs type of our FUSE mounts in mountinfo.
pub const FS_TYPE: &str = "fuse.haina-rbd";
/// Mount source prefix: `haina-rbd:<pool>/<image>`.
pub const SOURCE_PREFIX: &str = "haina-rbd:";
/// The one file in the FUSE mount.
pub const IMAGE_FILE: &str = "image";

/// Exit codes of `haina rbd-fuse` the plugin tells apart.
pub const EXIT_LOCK_HELD: i32 = 3;
pub const EXIT_IMAGE_MISSING: i32 = 4;
/// The passphrase does not open the image's LUKS header.
pub const EXIT_WRONG_PASSPHRASE: i32 = 5;

/// How long the server may take to connect, open, lock and mount.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after its unmount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// The descriptor number the server finds its FUSE connection at.
const SERVER_FUSE_FD: i32 = 3;
/// Where fusectl lives (mounted there if it is not yet).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// `/dev/fuse` and loop devices are all this mounter needs.
pub fn available() -> Result<(), AttachError> {
    for (p, what) in [
        ("/dev/fuse", "the FUSE device /dev/fuse (module fuse)"),
        ("/dev/loop-control", "/dev/loop-control (module loop)"),
    ] {
        if !Path::new(p).exists() {
            return Err(AttachError::Missing {
                mounter: "fuse",
                what: format!("{what} is absent"),
            });
        }
    }
    Ok(())
}

/// Where one volume's attachment lives on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub mountpoint: PathBuf,
    pub file: PathBuf,
    pub log: PathBuf,
    pub pid: PathBuf,
}

impl Paths {
    /// `node_dir` must be canonical (sysfs shows canonical backing paths).
    pub fn new(node_dir: &Path, object: &str) -> Self {
        let mountpoint = node_dir.join(object);
        Self {
            file: mountpoint.join(IMAGE_FILE),
            log: node_dir.join(format!("{object}.log")),
            pid: node_dir.join(format!("{object}.pid")),
            mountpoint,
        }
    }
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> AttachError {
    let what = what.into();
    move |e| AttachError::system(what, e)
}

fn read_table() -> Result<MountTable, AttachError> {
    MountTable::read().map_err(|e| AttachError::system("reading mountinfo", e))
}

/// Loop devices whose backing file is `file`, by sysfs path only.
fn loops_of(file: &Path) -> Result<Vec<LoopDevice>, AttachError> {
    Ok(loopdev::list()
        .map_err(|e| AttachError::system("listing loop devices", e))?
        .into_iter()
        .filter(|(_, backing)| backing == file)
        .map(|(dev, _)| dev)
        .collect())
}

/// What the kernel holds of this attachment.
#[derive(Debug, PartialEq, Eq)]
pub enum MountState {
    None,
    /// Our FUSE mount, serving `source` (`pool/image`).
    Ours {
        source: String,
    },
    /// Something else is mounted there.
    Foreign(String),
}

/// The FUSE connection's number (the minor of the mount's anonymous
/// device, as mountinfo shows it), which names it under fusectl.
pub fn connection_id(table: &MountTable, mountpoint: &Path) -> Option<u32> {
    table
        .at(mountpoint)
        .filter(|e| e.fs_type == FS_TYPE && e.major == 0)
        .map(|e| e.minor)
}

pub fn mount_state(table: &MountTable, mountpoint: &Path) -> MountState {
    match table.at(mountpoint) {
        None => MountState::None,
        Some(e) if e.fs_type == FS_TYPE => MountState::Ours {
            source: e
                .source
                .strip_prefix(SOURCE_PREFIX)
                .unwrap_or(&e.source)
                .to_string(),
        },
        Some(e) => MountState::Foreign(format!("{} ({})", e.source, e.fs_type)),
    }
}

/// The existing attachment, if a loop device serves our FUSE file.
pub fn find(paths: &Paths) -> Result<Option<Attachment>, AttachError> {
    let Some(dev) = loops_of(&paths.file)?.into_iter().next() else {
        return Ok(None);
    };
    let backing = match mount_state(&read_table()?, &paths.mountpoint) {
        MountState::Ours { source } => source,
        _ => paths.file.display().to_string(),
    };
    Ok(Some(Attachment {
        device: dev.path(),
        mounter: "fuse",
        backing,
        newly_attached: false,
    }))
}

/// Attaches `target`: (re)uses a live FUSE server for it or starts one,
/// then finds or attaches the loop device.
pub fn attach(target: &Target<'_>, paths: &Paths, exe: &Path) -> Result<Attachment, AttachError> {
    let spec = target.spec();
    let mut started = false;
    match mount_state(&read_table()?, &paths.mountpoint) {
        MountState::Foreign(what) => {
            return Err(AttachError::Conflict(format!(
                "{} already has {what} mounted; refusing to attach {spec} there",
                paths.mountpoint.display()
            )));
        }
        MountState::Ours { source } if source != spec => {
            return Err(AttachError::Conflict(format!(
                "{} serves {source}, not {spec}",
                paths.mountpoint.display()
            )));
        }
        MountState::Ours { .. } => match server(paths) {
            Server::Running(pid) => {
                tracing::info!(image = %spec, pid, "re-adopting the running FUSE server")
            }
            state => {
                // A device over a dead or stopped server is beyond repair
                // here: unstage must clean it up first.
                if let Some(dev) = loops_of(&paths.file)?.first() {
                    return Err(AttachError::Server {
                        image: spec,
                        detail: format!(
                            "the server is {state} while {} is attached; unstage the volume to \
                             clean up",
                            dev.path().display()
                        ),
                        log: paths.log.clone(),
                    });
                }
                if let Server::Stopped(pid) = state {
                    return Err(AttachError::Server {
                        image: spec,
                        detail: format!("the server (pid {pid}) is stopped; unstage the volume"),
                        log: paths.log.clone(),
                    });
                }
                tracing::warn!(image = %spec, "FUSE server is gone; restarting it");
                unmount_fuse(paths)?;
                start_server(target, paths, exe)?;
                started = true;
            }
        },
        MountState::None => {
            start_server(target, paths, exe)?;
            started = true;
        }
    }
    let opts = AttachOptions {
        direct_io: true,
        read_only: target.mode.read_only(),
    };
    // Opening the file goes through the server: bounded, like every call
    // through the FUSE mount. A device attached after this caller gave up
    // belongs to no stage: it is detached at once (left, it would outlive
    // the FUSE mount the failed attach stops, as a nameless `/image`).
    let file = paths.file.clone();
    let attached = deadline::run_or_undo(
        format!("attaching a loop device over {}", paths.file.display()),
        Deadline::Mount.duration(),
        move || loopdev::attach_or_find(&file, &opts),
        |late| {
            if let Ok((dev, true)) = late
                && let Err(e) = loopdev::detach(&dev)
            {
                tracing::error!(device = %dev.path().display(), error = %e,
                    "detaching a loop device attached after its caller gave up");
            }
        },
    )
    .map_err(|e| AttachError::system(format!("attaching a loop device over {spec}"), e))
    .and_then(|r| {
        r.map_err(|e| AttachError::system(format!("attaching a loop device over {spec}"), e))
    });
    match attached {
        Ok((dev, newly_attached)) => Ok(Attachment {
            device: dev.path(),
            mounter: "fuse",
            backing: spec,
            newly_attached: newly_attached || started,
        }),
        Err(err) => {
            if started && let Err(undo) = stop_server(paths) {
                tracing::warn!(error = %undo, "stopping the FUSE server after a failed attach");
            }
            Err(err)
        }
    }
}

/// Mounts the FUSE filesystem (in this process's mount namespace), spawns
/// `haina rbd-fuse` detached with the connection's fd, and waits until it
/// says it serves (or exits, or the deadline passes).
fn start_server(target: &Target<'_>, paths: &Paths, exe: &Path) -> Result<(), AttachError> {
    let spec = target.spec();
    fs::create_dir_all(&paths.mountpoint)
        .map_err(sys(format!("creating {}", paths.mountpoint.display())))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.log)
        .map_err(sys(format!("opening {}", paths.log.display())))?;
    let fuse = mount_connection(target, paths)?;
    let mut cmd = Command::new(exe);
    cmd.arg("rbd-fuse")
        .args(["--pool", target.rados_pool, "--image", target.image])
        .args(["--namespace", target.namespace])
        .arg("--mountpoint")
        .arg(&paths.mountpoint)
        .args(["--fuse-fd", &SERVER_FUSE_FD.to_string()])
        .args(["--user", target.user, "--node-id", target.node_id])
        .args(["--mode", target.mode.as_str()]);
    if !target.mon_host.is_empty() {
        cmd.args(["--mon-host", target.mon_host]);
    }
    if let Some(conf) = target.ceph_conf {
        cmd.arg("--ceph-conf").arg(conf);
    }
    if let Some(unlock) = &target.encryption {
        cmd.args(["--encryption-format", unlock.format.as_str()]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fuse);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // dup2/fcntl on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid().map_err(io::Error::from)?;
            let src = std::os::fd::BorrowedFd::borrow_raw(raw);
            if raw == SERVER_FUSE_FD {
                rustix::io::fcntl_setfd(src, rustix::io::FdFlags::empty())?;
            } else {
                let mut dst = std::mem::ManuallyDrop::new(
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(SERVER_FUSE_FD),
                );
                rustix::io::dup2(src, &mut dst)?;
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The server holds the connection now; ours must go, or the connection
    // would outlive a dead server.
    drop(fuse);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = unmount_fuse(paths);
            return Err(AttachError::system(
                format!("starting {} rbd-fuse", exe.display()),
                e,
            ));
        }
    };
    let pid = child.id();
    tracing::info!(image = %spec, pid, mountpoint = %paths.mountpoint.display(), "started FUSE server");
    if let Err(e) = fs::write(&paths.pid, format!("{pid}\n")) {
        tracing::warn!(pid_file = %paths.pid.display(), error = %e, "writing the server's pid file");
    }
    // The key (and the passphrase) go through the pipe and the pipe is
    // closed: nothing else carries them.
    if let Some(mut stdin) = child.stdin.take() {
        write_secrets(&mut stdin, target).map_err(sys("handing the key to the FUSE server"))?;
    }
    let (ready_tx, ready_rx) = mpsc::channel::<bool>();
    if let Some(mut stdout) = child.stdout.take() {
        std::thread::Builder::new()
            .name(format!("ready-{pid}"))
            .spawn(move || {
                let mut line = [0u8; 6];
                let ok =
                    io::Read::read_exact(&mut stdout, &mut line).is_ok() && &line == b"ready\n";
                let _ = ready_tx.send(ok);
            })
            .map_err(sys("spawning the readiness thread"))?;
    }
    // Reap it whenever it exits, so it never lingers as a zombie of ours.
    let (tx, rx) = mpsc::channel::<ExitStatus>();
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        })
        .map_err(sys("spawning the reaper thread"))?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(status) = rx.try_recv() {
            let tail = log_tail(&paths.log, 3);
            // Its connection died with it: the mount unmounts at once.
            let _ = unmount_fuse(paths);
            let _ = fs::remove_file(&paths.pid);
            let _ = fs::remove_dir(&paths.mountpoint);
            return Err(match status.code() {
                Some(EXIT_LOCK_HELD) => AttachError::LockHeld {
                    image: spec,
                    detail: tail,
                },
                Some(EXIT_IMAGE_MISSING) => AttachError::ImageMissing { image: spec },
                Some(EXIT_WRONG_PASSPHRASE) if target.encryption.is_some() => {
                    let unlock = target.encryption.as_ref().expect("checked");
                    AttachError::WrongPassphrase {
                        volume: unlock.volume.to_string(),
                        format: unlock.format,
                    }
                }
                _ => AttachError::Server {
                    image: spec,
                    detail: format!("exited ({status}) before it was ready: {tail}"),
                    log: paths.log.clone(),
                },
            });
        }
        match ready_rx.try_recv() {
            Ok(true) => return Ok(()),
            // EOF without "ready": it is exiting; its status follows.
            Ok(false) | Err(mpsc::TryRecvError::Empty | mpsc::TryRecvError::Disconnected) => {}
        }
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive"),
                rustix::process::Signal::KILL,
            );
            let _ = unmount_fuse(paths);
            return Err(AttachError::Server {
                image: spec,
                detail: format!("not ready after {READY_TIMEOUT:?}; killed it"),
                log: paths.log.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The server's stdin: the cephx key, then (for an encrypted volume) a
/// newline and the passphrase, byte for byte up to the end of the pipe. A
/// base64 key never holds a newline, so the first one separates the two.
pub(crate) fn write_secrets(w: &mut impl Write, target: &Target<'_>) -> io::Result<()> {
    w.write_all(target.key.expose().as_bytes())?;
    if let Some(unlock) = &target.encryption {
        w.write_all(b"\n")?;
        w.write_all(unlock.passphrase.expose().as_bytes())?;
    }
    w.flush()
}

/// Opens `/dev/fuse` and mounts the connection at the mount point
/// (`fuse.haina-rbd`, source `haina-rbd:<spec>`); returns the connection.
/// The kernel queues the FUSE handshake until the server reads it, and
/// nothing here touches the mount itself.
fn mount_connection(
    target: &Target<'_>,
    paths: &Paths,
) -> Result<std::os::fd::OwnedFd, AttachError> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::MountFlags;
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| AttachError::system("opening /dev/fuse", io::Error::from(e)))?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    );
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if target.mode.read_only() {
        flags |= MountFlags::RDONLY;
    }
    let source = format!("{SOURCE_PREFIX}{}", target.spec());
    let data = std::ffi::CString::new(data).expect("no NUL in mount options");
    rustix::mount::mount(
        source.as_str(),
        &paths.mountpoint,
        FS_TYPE,
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|e| {
        AttachError::system(
            format!(
                "mounting the FUSE connection at {}",
                paths.mountpoint.display()
            ),
            io::Error::from(e),
        )
    })?;
    Ok(fd)
}

/// Unmounts the FUSE mount if it is ours (busy: retried for a while, since
/// a just-detached loop device lets go of the file asynchronously).
fn unmount_fuse(paths: &Paths) -> Result<(), AttachError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match mount_state(&read_table()?, &paths.mountpoint) {
            MountState::None => return Ok(()),
            MountState::Foreign(what) => {
                return Err(AttachError::Conflict(format!(
                    "{} has a foreign mount {what}; not touching it",
                    paths.mountpoint.display()
                )));
            }
            MountState::Ours { .. } => {}
        }
        match mount::unmount(&paths.mountpoint) {
            Ok(()) => continue,
            Err(e) if e.errno == rustix::io::Errno::BUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.errno == rustix::io::Errno::BUSY => {
                tracing::warn!(mountpoint = %paths.mountpoint.display(),
                    "FUSE mount still busy; detaching it lazily");
                return mount::unmount_lazy(&paths.mountpoint)
                    .map_err(|e| AttachError::system("unmounting the FUSE mount", e));
            }
            Err(e) => return Err(AttachError::system("unmounting the FUSE mount", e)),
        }
    }
}

/// The server's pid, if the pid file names a live `rbd-fuse` for this mount.
fn server_pid(paths: &Paths) -> Option<i32> {
    let pid: i32 = fs::read_to_string(&paths.pid).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let mp = paths.mountpoint.as_os_str().as_encoded_bytes();
    (args.iter().any(|a| *a == b"rbd-fuse") && args.contains(&mp)).then_some(pid)
}

/// A process's state letter from `/proc/<pid>/stat` (`R`, `S`, `D`, `T`,
/// `Z`...); reading it never blocks, whatever the process is doing.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn alive(pid: i32) -> bool {
    // A zombie has exited; its parent just has not reaped it yet.
    !matches!(proc_state(pid), None | Some('Z' | 'X'))
}

/// What the volume's server is doing, from /proc alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Running(i32),
    /// Stopped by a signal (SIGSTOP) or a tracer: it serves nothing.
    Stopped(i32),
    Gone,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running(pid) => write!(f, "running (pid {pid})"),
            Self::Stopped(pid) => write!(f, "stopped (pid {pid})"),
            Self::Gone => f.write_str("not running"),
        }
    }
}

pub fn server(paths: &Paths) -> Server {
    match server_pid(paths) {
        None => Server::Gone,
        Some(pid) => match proc_state(pid) {
            None | Some('Z' | 'X') => Server::Gone,
            Some('T' | 't') => Server::Stopped(pid),
            Some(_) => Server::Running(pid),
        },
    }
}

/// Why I/O through this attachment cannot flow, if it cannot: a server
/// that is gone or stopped, a FUSE connection that is gone, or a stat of
/// the image file that fails or stalls (bounded by a short deadline; a stat
/// still stuck from an earlier check answers at once).
pub fn health(paths: &Paths) -> Option<String> {
    let file = paths.file.display();
    match server(paths) {
        Server::Running(_) => {}
        state => return Some(format!("the FUSE server of {file} is {state}")),
    }
    let table = match read_table() {
        Ok(t) => t,
        Err(e) => return Some(e.to_string()),
    };
    let Some(conn) = connection_id(&table, &paths.mountpoint) else {
        return Some(format!(
            "the FUSE mount at {} is gone (the loop device serves a file nobody can reach)",
            paths.mountpoint.display()
        ));
    };
    let fusectl = Path::new(FUSECTL);
    if fusectl.join(conn.to_string()).is_dir() {
        // fusectl is mounted and lists live connections: ours must be there.
    } else if fs::read_dir(fusectl).is_ok_and(|mut d| d.next().is_some()) {
        return Some(format!("the FUSE connection {conn} of {file} is gone"));
    }
    let f = paths.file.clone();
    match deadline::run(format!("stat {file}"), Deadline::Quick, move || {
        fs::metadata(&f).map(drop)
    }) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("the FUSE data path of {file} is dead: {e}")),
        Err(stalled) => Some(format!(
            "the FUSE data path of {file} is stalled: {stalled}"
        )),
    }
}

/// Tears the attachment down without waiting on its data path: aborts the
/// FUSE connection (so stuck requests fail), lazily detaches the FUSE
/// mount, detaches the loop device(s), kills the server and removes its
/// files. Each step is bounded; nothing left is success.
pub fn force_detach(paths: &Paths) -> Result<(), AttachError> {
    let pid = server_pid(paths);
    let table = read_table()?;
    // The loop devices are found by their backing path, which the kernel
    // shows relative to the FUSE mount: look them up before the mount is
    // detached (afterwards they show as `/image` and would leak).
    let loops = loops_of(&paths.file)?;
    if let Some(conn) = connection_id(&table, &paths.mountpoint) {
        abort_connection(conn)?;
    }
    for dev in loops {
        bounded(format!("detaching {}", dev.path().display()), move || {
            loopdev::detach(&dev).map_err(io::Error::other)
        })?;
    }
    if let MountState::Ours { .. } = mount_state(&table, &paths.mountpoint) {
        let mp = paths.mountpoint.clone();
        bounded(
            format!("umount -l {}", paths.mountpoint.display()),
            move || mount::unmount_lazy(&mp).map_err(io::Error::other),
        )?;
    }
    if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "killing the FUSE server (force-detach)"
        );
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    for f in [&paths.pid, &paths.log] {
        match fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AttachError::system(format!("removing {}", f.display()), e)),
        }
    }
    match fs::remove_dir(&paths.mountpoint) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AttachError::system(
            format!("removing {}", paths.mountpoint.display()),
            e,
        )),
    }
}

/// Runs a host call that may wait on the data path under the mount deadline.
fn bounded(
    what: String,
    f: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Result<(), AttachError> {
    deadline::run(what.clone(), Deadline::Mount, f)
        .map_err(|e| AttachError::system(what.clone(), e))?
        .map_err(|e| AttachError::system(what, e))
}

/// Aborts FUSE connection `conn` through fusectl (mounting fusectl first if
/// it is not): every pending and future request fails with ENOTCONN.
fn abort_connection(conn: u32) -> Result<(), AttachError> {
    let dir = Path::new(FUSECTL);
    if !dir.join(conn.to_string()).is_dir() {
        match rustix::mount::mount(
            "fusectl",
            dir,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        ) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => {
                return Err(AttachError::system(
                    format!("mounting fusectl at {FUSECTL}"),
                    io::Error::from(e),
                ));
            }
        }
    }
    let abort = dir.join(conn.to_string()).join("abort");
    match fs::write(&abort, "1") {
        Ok(()) => {
            tracing::warn!(connection = conn, "aborted the FUSE connection");
            Ok(())
        }
        // Already gone with its server.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AttachError::system(
            format!("writing {}", abort.display()),
            e,
        )),
    }
}

/// Unmounts and waits for the server to exit (killing it if it hangs).
fn stop_server(paths: &Paths) -> Result<(), AttachError> {
    let pid = server_pid(paths);
    unmount_fuse(paths)?;
    if let Some(pid) = pid {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while alive(pid) {
            if Instant::now() > deadline {
                tracing::warn!(
                    pid,
                    "FUSE server did not exit after its unmount; killing it"
                );
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for f in [&paths.pid, &paths.log] {
        match fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AttachError::system(format!("removing {}", f.display()), e)),
        }
    }
    match fs::remove_dir(&paths.mountpoint) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AttachError::system(
            format!("removing {}", paths.mountpoint.display()),
            e,
        )),
    }
}

/// Detaches the loop device(s), unmounts the FUSE mount, waits for the
/// server to exit and removes its files. Nothing attached is success.
pub fn detach(paths: &Paths) -> Result<(), AttachError> {
    for dev in loops_of(&paths.file)? {
        bounded(format!("detaching {}", dev.path().display()), move || {
            loopdev::detach(&dev).map_err(io::Error::other)
        })?;
        if dev.backing_file().as_deref() == Some(paths.file.as_path()) {
            return Err(AttachError::Conflict(format!(
                "{} is still open (mounted or held by a process); it detaches on its last close",
                dev.path().display()
            )));
        }
    }
    // Never stat the mount point: that would go through the server.
    stop_server(paths)
}

/// Makes the loop device see a grown image; returns its size.
pub fn refresh(paths: &Paths) -> Result<Option<u64>, AttachError> {
    let Some(dev) = loops_of(&paths.file)?.into_iter().next() else {
        return Ok(None);
    };
    // The FUSE attributes have no cache lifetime: a stat fetches the
    // image's current size into the inode the loop device reads it from.
    let f = paths.file.clone();
    bounded(format!("stat {}", paths.file.display()), move || {
        fs::metadata(&f).map(drop)
    })?;
    loopdev::refresh_capacity(&dev)
        .map(Some)
        .map_err(|e| AttachError::system("refreshing the loop device's capacity", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_states() {
        let t = MountTable::parse(
            "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
             40 22 0:60 / /d/rbd/p/v1 rw,nosuid,nodev - fuse.haina-rbd haina-rbd:kube/csi-vol-v1 rw,user_id=0\n\
             41 22 0:61 / /d/rbd/p/v2 rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        assert_eq!(
            mount_state(&t, Path::new("/d/rbd/p/v1")),
            MountState::Ours {
                source: "kube/csi-vol-v1".into()
            }
        );
        assert!(matches!(
            mount_state(&t, Path::new("/d/rbd/p/v2")),
            MountState::Foreign(_)
        ));
        assert_eq!(mount_state(&t, Path::new("/d/rbd/p/v3")), MountState::None);
        // The FUSE connection is named by the mount's minor, ours only.
        assert_eq!(connection_id(&t, Path::new("/d/rbd/p/v1")), Some(60));
        assert_eq!(connection_id(&t, Path::new("/d/rbd/p/v2")), None);
        assert_eq!(connection_id(&t, Path::new("/d/rbd/p/v3")), None);
    }

    #[test]
    fn paths() {
        let p = Paths::new(Path::new("/var/lib/haina/rbd/ceph"), "pvc-1");
        assert_eq!(p.file, PathBuf::from("/var/lib/haina/rbd/ceph/pvc-1/image"));
        assert_eq!(p.pid, PathBuf::from("/var/lib/haina/rbd/ceph/pvc-1.pid"));
    }
}
