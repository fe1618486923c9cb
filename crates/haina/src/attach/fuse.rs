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
//! The server is not the node plugin: it runs in its own session, with
//! stdin and stdout closed, and outlives a plugin restart. The key reaches
//! it through a pipe on stdin (never argv, env or a file). The kernel is the
//! record of what is attached: the FUSE mount in mountinfo and the loop
//! device whose sysfs `backing_file` is `<object>/image`. Both are compared
//! as strings (no `stat` through the FUSE mount), so a dead server cannot
//! hang or fail the lookups that unstage needs to clean up.
//!
//! Detach is the reverse: loop device, then FUSE mount (the server sees the
//! unmount, flushes, releases its lock and exits), then the files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// How long the server may take to connect, open, lock and mount.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after its unmount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

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
        MountState::Ours { .. } => match fs::metadata(&paths.file) {
            Ok(_) => tracing::info!(image = %spec, "re-adopting the running FUSE server"),
            Err(e) => {
                // The server is gone (ENOTCONN). A device over the dead file
                // is beyond repair: unstage must clean it up first.
                if let Some(dev) = loops_of(&paths.file)?.first() {
                    return Err(AttachError::Server {
                        image: spec,
                        detail: format!(
                            "the server died ({e}) while {} was attached; unstage the volume to clean up",
                            dev.path().display()
                        ),
                        log: paths.log.clone(),
                    });
                }
                tracing::warn!(image = %spec, error = %e, "FUSE server is gone; restarting it");
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
    match loopdev::attach_or_find(&paths.file, &opts) {
        Ok((dev, newly_attached)) => Ok(Attachment {
            device: dev.path(),
            mounter: "fuse",
            backing: spec,
            newly_attached: newly_attached || started,
        }),
        Err(e) => {
            let err = AttachError::system(format!("attaching a loop device over {spec}"), e);
            if started && let Err(undo) = stop_server(paths) {
                tracing::warn!(error = %undo, "stopping the FUSE server after a failed attach");
            }
            Err(err)
        }
    }
}

/// Spawns `haina rbd-fuse` detached and waits until its mount serves.
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
    let mut cmd = Command::new(exe);
    cmd.arg("rbd-fuse")
        .args(["--pool", target.rados_pool, "--image", target.image])
        .args(["--namespace", target.namespace])
        .arg("--mountpoint")
        .arg(&paths.mountpoint)
        .args(["--user", target.user, "--node-id", target.node_id])
        .args(["--mode", target.mode.as_str()])
        .arg("--pid-file")
        .arg(&paths.pid);
    if !target.mon_host.is_empty() {
        cmd.args(["--mon-host", target.mon_host]);
    }
    if let Some(conf) = target.ceph_conf {
        cmd.arg("--ceph-conf").arg(conf);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // SAFETY: setsid(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = cmd
        .spawn()
        .map_err(sys(format!("starting {} rbd-fuse", exe.display())))?;
    let pid = child.id();
    tracing::info!(image = %spec, pid, mountpoint = %paths.mountpoint.display(), "started FUSE server");
    // The key goes through the pipe and the pipe is closed: nothing else.
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(target.key.expose().as_bytes())
            .map_err(sys("handing the key to the FUSE server"))?;
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
            let _ = fs::remove_dir(&paths.mountpoint);
            return Err(match status.code() {
                Some(EXIT_LOCK_HELD) => AttachError::LockHeld {
                    image: spec,
                    detail: tail,
                },
                Some(EXIT_IMAGE_MISSING) => AttachError::ImageMissing { image: spec },
                _ => AttachError::Server {
                    image: spec,
                    detail: format!("exited ({status}) before its mount was ready: {tail}"),
                    log: paths.log.clone(),
                },
            });
        }
        if matches!(
            mount_state(&read_table()?, &paths.mountpoint),
            MountState::Ours { .. }
        ) && fs::metadata(&paths.file).is_ok()
        {
            return Ok(());
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
        std::thread::sleep(Duration::from_millis(20));
    }
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

fn alive(pid: i32) -> bool {
    // A zombie has exited; its parent just has not reaped it yet.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
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
        loopdev::detach(&dev)
            .map_err(|e| AttachError::system(format!("detaching {}", dev.path().display()), e))?;
        if dev.backing_file().as_deref() == Some(paths.file.as_path()) {
            return Err(AttachError::Conflict(format!(
                "{} is still open (mounted or held by a process); it detaches on its last close",
                dev.path().display()
            )));
        }
    }
    if !paths.mountpoint.exists() && !paths.pid.exists() {
        return Ok(());
    }
    stop_server(paths)
}

/// Makes the loop device see a grown image; returns its size.
pub fn refresh(paths: &Paths) -> Result<Option<u64>, AttachError> {
    let Some(dev) = loops_of(&paths.file)?.into_iter().next() else {
        return Ok(None);
    };
    // The FUSE attributes have no cache lifetime: a stat fetches the
    // image's current size into the inode the loop device reads it from.
    fs::metadata(&paths.file).map_err(sys(format!("stat {}", paths.file.display())))?;
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
    }

    #[test]
    fn paths() {
        let p = Paths::new(Path::new("/var/lib/haina/rbd/ceph"), "pvc-1");
        assert_eq!(p.file, PathBuf::from("/var/lib/haina/rbd/ceph/pvc-1/image"));
        assert_eq!(p.pid, PathBuf::from("/var/lib/haina/rbd/ceph/pvc-1.pid"));
    }
}
