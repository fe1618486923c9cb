//! Node operations: stage (attach + format + mount), publish (bind mount),
//! and their reverses, plus stats and online expansion.
//!
//! Links of the mount chain owned here (see docs/architecture.md):
//! - block device → filesystem at the staging path (`stage`);
//! - staging path → pod target path, a bind mount (`publish`);
//! - for raw block volumes, the device node → a file at the target path.
//!
//! Every step first asks the kernel what is already there (mountinfo, loop
//! devices) and decides with a pure function ([`decide_stage`],
//! [`decide_publish`]) what is left to do, so a retried call after `kill -9`
//! converges and a mount from a foreign source is never mistaken for ours.
//! mkfs runs only on a device blkid positively reports blank, or one this
//! node was formatting when it crashed (a marker file under the data dir).

pub mod superblock;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use haina_sys::exec::Cmd;
use haina_sys::fs::{FsType, Probe};
use haina_sys::mount;
use haina_sys::mountinfo::{MountEntry, MountTable};

use crate::backend::{Attachment, Backend};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::VolumeId;
use crate::volume::{AccessMode, AccessType, Capability, MIB, Secrets};

fn sys<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> Error {
    let what = what.into();
    move |e| Error::internal(what, e)
}

fn fs_err(what: &str) -> impl FnOnce(haina_sys::fs::FsError) -> Error + '_ {
    move |e| match e {
        haina_sys::fs::FsError::Exec(x) => Error::from(x).context(what),
        other => Error::internal(what.to_string(), other),
    }
}

/// `(major, minor)` of a device node.
pub fn dev_numbers(dev: &Path) -> Result<(u32, u32)> {
    let st = rustix::fs::stat(dev)
        .map_err(|e| Error::internal(format!("stat {}", dev.display()), io::Error::from(e)))?;
    Ok((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
}

fn is_dev(e: &MountEntry, dev: (u32, u32)) -> bool {
    (e.major, e.minor) == dev && e.root == Path::new("/")
}

/// Is `e` a bind mount of the device node `dev_path` (e.g. `/dev/loop3`)?
pub fn is_device_bind(e: &MountEntry, dev_path: &Path) -> bool {
    let rel = dev_path
        .strip_prefix("/dev")
        .map(|r| Path::new("/").join(r));
    e.fs_type == "devtmpfs" && rel.is_ok_and(|r| e.root == r)
}

/// What `stage` must still do at `staging` for the filesystem on `dev`.
#[derive(Debug, PartialEq, Eq)]
pub enum StageAction {
    Done,
    Mount,
    Conflict(String),
}

pub fn decide_stage(table: &MountTable, staging: &Path, dev: (u32, u32)) -> StageAction {
    match table.at(staging) {
        None => StageAction::Mount,
        Some(e) if is_dev(e, dev) => StageAction::Done,
        Some(e) => StageAction::Conflict(format!(
            "staging_target_path {} already has {} ({}:{}) mounted",
            staging.display(),
            e.source,
            e.major,
            e.minor
        )),
    }
}

/// What `publish` must still do at `target`.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishAction {
    Done,
    Bind,
    NotStaged,
    Conflict(String),
}

/// Decides publish of a filesystem volume: `dev` must be mounted at
/// `staging`; `target` is either free, or already our bind with the same
/// read-only state.
pub fn decide_publish(
    table: &MountTable,
    staging: &Path,
    target: &Path,
    dev: (u32, u32),
    readonly: bool,
) -> PublishAction {
    let Some(st) = table.at(staging).filter(|e| is_dev(e, dev)) else {
        return PublishAction::NotStaged;
    };
    let readonly = readonly || st.is_read_only();
    match table.at(target) {
        None => PublishAction::Bind,
        Some(e) if is_dev(e, dev) && e.is_read_only() == readonly => PublishAction::Done,
        Some(e) if is_dev(e, dev) => PublishAction::Conflict(format!(
            "target_path {} is already published {}",
            target.display(),
            if e.is_read_only() {
                "read-only"
            } else {
                "read-write"
            }
        )),
        Some(e) => PublishAction::Conflict(format!(
            "target_path {} already has {} ({}:{}) mounted",
            target.display(),
            e.source,
            e.major,
            e.minor
        )),
    }
}

/// Decides publish of a raw block volume at a file `target`.
pub fn decide_publish_block(
    table: &MountTable,
    target: &Path,
    dev_path: &Path,
    readonly: bool,
) -> PublishAction {
    match table.at(target) {
        None => PublishAction::Bind,
        Some(e) if is_device_bind(e, dev_path) && e.is_read_only() == readonly => {
            PublishAction::Done
        }
        Some(e) => PublishAction::Conflict(format!(
            "target_path {} already has {}{} mounted",
            target.display(),
            e.source,
            e.root.display()
        )),
    }
}

/// Mount points other than `except` that use the device (filesystem or node binds).
pub fn users_of(
    table: &MountTable,
    dev: (u32, u32),
    dev_path: &Path,
    except: &Path,
) -> Vec<PathBuf> {
    table
        .entries
        .iter()
        .filter(|e| (e.major, e.minor) == dev || is_device_bind(e, dev_path))
        .map(|e| e.mount_point.clone())
        .filter(|p| p != except)
        .collect()
}

/// Freezes the filesystem on `device` if it is mounted on this node, so
/// that a snapshot or copy taken now is filesystem-consistent. The guard
/// thaws it when dropped, on every path, errors included.
pub fn freeze_if_mounted(device: &Path) -> Result<Option<haina_sys::fs::FreezeGuard>> {
    let (major, minor) = dev_numbers(device)?;
    let table = read_table()?;
    let Some(mount) = table.mounts_of_dev(major, minor).into_iter().next() else {
        return Ok(None);
    };
    haina_sys::fs::FreezeGuard::freeze(&mount.mount_point)
        .map(Some)
        .map_err(|e| Error::internal(format!("freezing {}", mount.mount_point.display()), e))
}

fn formatting_marker(d: &Driver, id: &VolumeId) -> PathBuf {
    d.data_dir
        .join("node")
        .join("formatting")
        .join(format!("{id}"))
}

fn read_table() -> Result<MountTable> {
    MountTable::read().map_err(sys("reading /proc/self/mountinfo"))
}

pub struct StageRequest<'a> {
    pub volume_id: &'a VolumeId,
    pub staging: &'a Path,
    pub capability: &'a Capability,
    pub context: &'a BTreeMap<String, String>,
    /// ControllerPublishVolume published the volume read-only (its
    /// `publish_context` says so): the filesystem is mounted read-only too.
    pub readonly: bool,
}

pub fn stage(
    d: &Driver,
    backend: &dyn Backend,
    req: &StageRequest<'_>,
    secrets: &Secrets,
) -> Result<()> {
    backend.check_capability(req.capability)?;
    let att = backend.attach(req.volume_id, secrets)?;
    if !att.newly_attached
        && let Some(reason) = backend.data_path_health(req.volume_id, &att)
    {
        return Err(Error::FailedPrecondition(format!(
            "volume {} is attached at {} but its data path is not healthy: {reason}; unstage it \
             to tear it down",
            req.volume_id,
            att.device.display()
        )));
    }
    match mount_staging(d, backend, req, &att) {
        // Roll back what this call did; report both errors if that fails too.
        Err(e) if att.newly_attached => match backend.detach(req.volume_id) {
            Ok(()) => Err(e),
            Err(undo) => Err(e.context(format!(
                "(and detaching {} failed: {undo})",
                att.device.display()
            ))),
        },
        other => other,
    }
}

fn mount_staging(
    d: &Driver,
    backend: &dyn Backend,
    req: &StageRequest<'_>,
    att: &Attachment,
) -> Result<()> {
    let AccessType::Mount {
        fs_type,
        mount_flags,
    } = &req.capability.access
    else {
        return Ok(()); // a block volume is staged once attached
    };
    let dev = dev_numbers(&att.device)?;
    let table = read_table()?;
    match decide_stage(&table, req.staging, dev) {
        StageAction::Done => {
            let fs = fs_of(fs_type, req.context)?;
            return grow_if_needed(&att.device, req.staging, fs, true);
        }
        StageAction::Conflict(m) => return Err(Error::AlreadyExists(m)),
        StageAction::Mount => {}
    }
    if !req.staging.is_dir() {
        fs::create_dir_all(req.staging)
            .map_err(sys(format!("creating {}", req.staging.display())))?;
    }
    let wanted = fs_of(fs_type, req.context)?;
    let explicit = !fs_type.is_empty() || req.context.contains_key("fsType");
    let blank = backend.is_blank(req.volume_id)?;
    let fs = ensure_filesystem(
        d,
        req.volume_id,
        &att.device,
        wanted,
        explicit,
        blank,
        req.context,
    )?;

    let mut opts: Vec<String> = mount_flags.clone();
    if let Some(o) = req.context.get("mountOptions") {
        opts.extend(
            o.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    let writable = !req.capability.mode.is_read_only() && !req.readonly;
    if !writable {
        opts.push("ro".into());
    }
    if fs == FsType::Xfs {
        // Clones and restores share their source's UUID; nouuid lets both mount.
        opts.push("nouuid".into());
    }
    let (flags, data) = mount::parse_mount_options(&opts);
    if writable && fs == FsType::Ext4 {
        grow_if_needed(&att.device, req.staging, fs, false)?;
    }
    failpoint::hit("stage-before-mount")?;
    mount::mount_fs(&att.device, req.staging, fs.as_str(), flags, &data).map_err(|e| {
        match e.errno {
            rustix::io::Errno::INVAL => {
                Error::InvalidArgument(format!("mount rejected the options {opts:?}: {e}"))
            }
            _ => Error::internal("mounting the staging path", e),
        }
    })?;
    if writable && fs == FsType::Xfs {
        grow_if_needed(&att.device, req.staging, fs, true)?;
    }
    Ok(())
}

fn fs_of(cap_fs: &str, ctx: &BTreeMap<String, String>) -> Result<FsType> {
    let raw = if cap_fs.is_empty() {
        ctx.get("fsType").map(String::as_str).unwrap_or("")
    } else {
        cap_fs
    };
    raw.parse()
        .map_err(|e| Error::InvalidArgument(format!("volume_capability.mount.fs_type: {e}")))
}

/// Returns the filesystem on `dev`, creating it only on a blank device (or
/// one whose interrupted mkfs this node recorded).
fn ensure_filesystem(
    d: &Driver,
    id: &VolumeId,
    dev: &Path,
    wanted: FsType,
    explicit: bool,
    blank: bool,
    ctx: &BTreeMap<String, String>,
) -> Result<FsType> {
    let marker = formatting_marker(d, id);
    let interrupted = marker.exists();
    let probe = if blank {
        Probe::Blank
    } else {
        haina_sys::fs::probe(dev).map_err(fs_err("probing the device"))?
    };
    match probe {
        Probe::Filesystem { fs_type, .. } if !interrupted => {
            let found: FsType = fs_type.parse().map_err(|_| {
                Error::FailedPrecondition(format!(
                    "{} holds a {fs_type} filesystem, which haina does not mount; refusing to reformat it",
                    dev.display()
                ))
            })?;
            if explicit && found != wanted {
                return Err(Error::FailedPrecondition(format!(
                    "{} already holds {}, not the requested {}; refusing to reformat it",
                    dev.display(),
                    found.as_str(),
                    wanted.as_str()
                )));
            }
            Ok(found)
        }
        Probe::Other { what } if !interrupted => Err(Error::FailedPrecondition(format!(
            "{} holds {what}; refusing to format it",
            dev.display()
        ))),
        _ => {
            // The marker only has to outlive the process (kill -9), not a
            // power cut: after one, a half-made filesystem fails to mount
            // with a clear error instead of being silently reformatted. So
            // it is written without fsync, which keeps stage fast.
            write_marker(&marker, wanted.as_str())?;
            let extra: Vec<String> = ctx
                .get("mkfsOptions")
                .map(|o| o.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            failpoint::hit("stage-before-mkfs")?;
            haina_sys::fs::mkfs(dev, wanted, &extra).map_err(fs_err("making the filesystem"))?;
            remove_marker(&marker)?;
            Ok(wanted)
        }
    }
}

/// Grows the filesystem when the device is at least 1 MiB larger than it
/// (a clone or restore into a bigger volume, or an expansion while
/// unstaged). At stage time (`mounted == false` for ext4) ext4 is grown
/// before it is mounted: an offline resize2fs, after the e2fsck it insists
/// on, needs no CAP_SYS_RESOURCE and cannot race a writer. xfs can only grow
/// mounted. The sizes come from the superblock, so the common case (nothing
/// to grow) spawns no tool at all.
fn grow_if_needed(dev: &Path, mount_point: &Path, fs: FsType, mounted: bool) -> Result<()> {
    let dev_size =
        haina_sys::fs::block_device_size(dev).map_err(fs_err("reading the device size"))?;
    let Some(fs_size) = superblock::read_fs_size(dev, fs)
        .map_err(sys(format!("reading the superblock of {}", dev.display())))?
    else {
        return Ok(());
    };
    if fs_size + MIB > dev_size {
        return Ok(());
    }
    tracing::info!(device = %dev.display(), fs_size, dev_size, mounted, "growing filesystem");
    if fs == FsType::Ext4 && !mounted {
        // 0: clean, 1: errors fixed. Anything else stops the grow.
        Cmd::new("e2fsck")
            .args(["-f", "-p"])
            .arg(dev)
            .ok_codes(&[0, 1])
            .run()?;
    }
    haina_sys::fs::grow(dev, mount_point, fs).map_err(fs_err("growing the filesystem"))
}

pub fn unstage(d: &Driver, backend: &dyn Backend, id: &VolumeId, staging: &Path) -> Result<()> {
    let table = read_table()?;
    if let Some(att) = backend.attachment(id)? {
        let dev = dev_numbers(&att.device)?;
        let others = users_of(&table, dev, &att.device, staging);
        if !others.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still published at {}; unpublish it first",
                others
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mounted = table.all_at(staging);
        if let Some(e) = mounted.iter().find(|e| !is_dev(e, dev)) {
            return Err(Error::FailedPrecondition(format!(
                "staging_target_path {} has a foreign mount of {}",
                staging.display(),
                e.source
            )));
        }
        // The unmount flushes through the data path, so it runs under a
        // deadline. One that stalls fails this call; the retry, finding it
        // still stuck, forces the teardown (lazy unmount + force_detach).
        // A data path found dead (the unmount then fails its writes fast)
        // is force-detached after the unmount.
        let mut force = backend.data_path_health(id, &att);
        for _ in mounted {
            let target = staging.to_path_buf();
            match haina_sys::deadline::run(
                format!("umount {}", staging.display()),
                haina_sys::deadline::Deadline::Mount,
                move || mount::unmount(&target),
            ) {
                Ok(r) => r.map_err(sys("unmounting the staging path"))?,
                Err(stalled) if stalled.stuck_for.is_none() => {
                    return Err(Error::Unavailable(format!(
                        "volume {id}: {stalled}; its data path is stuck ({}); retry \
                         NodeUnstageVolume to force it down (data not yet written is lost)",
                        backend
                            .data_path_health(id, &att)
                            .unwrap_or_else(|| "no reason known".into())
                    )));
                }
                Err(stalled) => {
                    tracing::warn!(volume = %id, error = %stalled, "forcing the unstage");
                    mount::unmount_lazy(staging)
                        .map_err(sys("lazily unmounting the staging path"))?;
                    force.get_or_insert_with(|| stalled.to_string());
                    break;
                }
            }
        }
        failpoint::hit("unstage-before-detach")?;
        match force {
            Some(reason) => {
                tracing::warn!(volume = %id, reason, "force-detaching the volume");
                backend.force_detach(id)?;
            }
            None => backend.detach(id)?,
        }
    } else if let Some(e) = table.at(staging) {
        return Err(Error::FailedPrecondition(format!(
            "staging_target_path {} has {} mounted, but volume {id} is not attached here",
            staging.display(),
            e.source
        )));
    }
    remove_marker(&formatting_marker(d, id))
}

fn write_marker(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(sys(format!("creating {}", dir.display())))?;
    }
    fs::write(path, text).map_err(sys(format!("writing {}", path.display())))
}

fn remove_marker(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::internal(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

pub struct PublishRequest<'a> {
    pub volume_id: &'a VolumeId,
    pub staging: &'a Path,
    pub target: &'a Path,
    pub capability: &'a Capability,
    pub readonly: bool,
}

pub fn publish(backend: &dyn Backend, req: &PublishRequest<'_>) -> Result<()> {
    backend.check_capability(req.capability)?;
    let att = backend.attachment(req.volume_id)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "volume {} is not staged on this node",
            req.volume_id
        ))
    })?;
    let table = read_table()?;
    let readonly = req.readonly || req.capability.mode.is_read_only();
    let (source, action) = if req.capability.is_block() {
        (
            att.device.clone(),
            decide_publish_block(&table, req.target, &att.device, readonly),
        )
    } else {
        let dev = dev_numbers(&att.device)?;
        (
            req.staging.to_path_buf(),
            decide_publish(&table, req.staging, req.target, dev, readonly),
        )
    };
    match action {
        PublishAction::Done => return Ok(()),
        PublishAction::NotStaged => {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is not staged at {}",
                req.volume_id,
                req.staging.display()
            )));
        }
        PublishAction::Conflict(m) => return Err(Error::AlreadyExists(m)),
        PublishAction::Bind => {}
    }
    if req.capability.mode == AccessMode::SingleNodeSingleWriter {
        let dev = dev_numbers(&att.device)?;
        let others = users_of(&table, dev, &att.device, req.staging);
        if let Some(other) = others.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {} has access mode SINGLE_NODE_SINGLE_WRITER and is already published at {}",
                req.volume_id,
                other.display()
            )));
        }
    }
    create_target(req.target, req.capability.is_block())?;
    mount::bind(&source, req.target).map_err(sys("bind-mounting the target path"))?;
    if readonly && let Err(e) = mount::remount_bind_readonly(req.target) {
        // Never leave a writable bind behind a failed read-only publish.
        let _ = mount::unmount(req.target);
        return Err(Error::internal("remounting the target read-only", e));
    }
    Ok(())
}

/// Creates the publish target: a directory, or a file for a block volume.
fn create_target(target: &Path, block: bool) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    if !parent.exists() {
        fs::create_dir_all(parent).map_err(sys(format!("creating {}", parent.display())))?;
    }
    match (fs::symlink_metadata(target), block) {
        (Err(e), _) if e.kind() == io::ErrorKind::NotFound => {}
        (Err(e), _) => return Err(Error::internal(format!("stat {}", target.display()), e)),
        (Ok(m), false) if m.is_dir() => return Ok(()),
        (Ok(m), true) if m.is_file() => return Ok(()),
        // Some COs pre-create a directory even for block volumes; an empty one can go.
        (Ok(m), true) if m.is_dir() => {
            fs::remove_dir(target).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "target_path {} is a non-empty directory: {e}",
                    target.display()
                ))
            })?;
        }
        (Ok(_), _) => {
            return Err(Error::FailedPrecondition(format!(
                "target_path {} exists and is not a {}",
                target.display(),
                if block { "file" } else { "directory" }
            )));
        }
    }
    if block {
        fs::File::create(target).map(drop)
    } else {
        fs::create_dir(target)
    }
    .map_err(sys(format!("creating {}", target.display())))
}

/// Unmounts everything at `target` and removes it. Only the empty directory
/// or empty file the publish created is removed; anything else is an error.
pub fn unpublish(target: &Path) -> Result<()> {
    for _ in 0..16 {
        let table = read_table()?;
        if table.at(target).is_none() {
            break;
        }
        mount::unmount(target).map_err(sys("unmounting the target path"))?;
    }
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("stat {}", target.display()), e)),
        Ok(m) if m.is_dir() => {
            fs::remove_dir(target).map_err(sys(format!("removing {}", target.display())))
        }
        Ok(m) if m.is_file() && m.len() == 0 => {
            fs::remove_file(target).map_err(sys(format!("removing {}", target.display())))
        }
        Ok(_) => Err(Error::FailedPrecondition(format!(
            "target_path {} is not a directory or an empty file; not removing it",
            target.display()
        ))),
    }
}

/// Usage and condition for NodeGetVolumeStats.
pub struct Stats {
    pub bytes: (u64, u64, u64),
    pub inodes: Option<(u64, u64, u64)>,
    pub abnormal: Option<String>,
}

/// `att` is the volume's attachment on this node, as the caller found it,
/// and `unhealthy` what its pool says is wrong with its data path: then
/// nothing is looked at through it (that could hang) and the volume is
/// reported abnormal.
pub fn stats(
    id: &VolumeId,
    path: &Path,
    att: Option<Attachment>,
    unhealthy: Option<String>,
) -> Result<Stats> {
    if let Some(reason) = unhealthy {
        return Ok(Stats {
            bytes: (0, 0, 0),
            inodes: None,
            abnormal: Some(format!("volume {id}: {reason}")),
        });
    }
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::NotFound(format!("volume_path {} does not exist", path.display()))
        }
        _ => Error::internal(format!("stat {}", path.display()), e),
    })?;
    let table = read_table()?;
    let Some(att) = att else {
        return Ok(Stats {
            bytes: (0, 0, 0),
            inodes: None,
            abnormal: Some(format!(
                "volume {id} has no block device attached on this node"
            )),
        });
    };
    if !meta.is_dir() {
        let size = haina_sys::fs::block_device_size(&att.device)
            .map_err(fs_err("reading the device size"))?;
        let abnormal = match table.at(path) {
            Some(e) if is_device_bind(e, &att.device) => None,
            _ => Some(format!(
                "{} is not bound to {}",
                path.display(),
                att.device.display()
            )),
        };
        return Ok(Stats {
            bytes: (size, 0, 0),
            inodes: None,
            abnormal,
        });
    }
    let dev = dev_numbers(&att.device)?;
    let abnormal = match table.at(path) {
        Some(e) if (e.major, e.minor) == dev => None,
        Some(e) => Some(format!(
            "{} is mounted from {}, not from {}",
            path.display(),
            e.source,
            att.device.display()
        )),
        None => Some(format!(
            "{} is not a mount point: the volume's mount is gone",
            path.display()
        )),
    };
    let u = haina_sys::fs::statvfs_usage(path).map_err(fs_err("statvfs"))?;
    Ok(Stats {
        bytes: (u.bytes_total, u.bytes_used, u.bytes_available),
        inodes: Some((u.inodes_total, u.inodes_used, u.inodes_free)),
        abnormal,
    })
}

/// NodeExpandVolume: make the device see the new size and grow the filesystem.
pub fn expand(
    backend: &dyn Backend,
    id: &VolumeId,
    volume_path: &Path,
    block: bool,
    att: Option<Attachment>,
) -> Result<u64> {
    let att = att.ok_or_else(|| {
        Error::FailedPrecondition(format!("volume {id} is not staged on this node"))
    })?;
    let size = backend.refresh_size(id)?;
    if block {
        return Ok(size);
    }
    let table = read_table()?;
    let dev = dev_numbers(&att.device)?;
    let entry = table
        .at(volume_path)
        .filter(|e| (e.major, e.minor) == dev)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "volume_path {} is not a mount of volume {id}",
                volume_path.display()
            ))
        })?;
    let fs: FsType = entry.fs_type.parse().map_err(|_| {
        Error::FailedPrecondition(format!("cannot grow a {} filesystem", entry.fs_type))
    })?;
    grow_if_needed(&att.device, volume_path, fs, true)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 7:3 / /stage/v1 rw,relatime - ext4 /dev/loop3 rw
31 22 7:3 / /pods/a/mount rw,relatime - ext4 /dev/loop3 rw
32 22 7:3 / /pods/b/mount ro,relatime - ext4 /dev/loop3 rw
33 22 0:5 /loop4 /pods/c/block rw,nosuid - devtmpfs udev rw
34 22 8:1 / /stage/foreign rw - ext4 /dev/sda1 rw
";

    fn t() -> MountTable {
        MountTable::parse(TABLE).unwrap()
    }

    #[test]
    fn stage_table() {
        let t = t();
        assert_eq!(
            decide_stage(&t, Path::new("/stage/v1"), (7, 3)),
            StageAction::Done
        );
        assert_eq!(
            decide_stage(&t, Path::new("/stage/v2"), (7, 5)),
            StageAction::Mount
        );
        assert!(matches!(
            decide_stage(&t, Path::new("/stage/foreign"), (7, 3)),
            StageAction::Conflict(_)
        ));
    }

    #[test]
    fn publish_table() {
        let t = t();
        let s = Path::new("/stage/v1");
        let p = |target: &str, ro| decide_publish(&t, s, Path::new(target), (7, 3), ro);
        assert_eq!(p("/pods/new/mount", false), PublishAction::Bind);
        assert_eq!(p("/pods/a/mount", false), PublishAction::Done);
        assert_eq!(p("/pods/b/mount", true), PublishAction::Done);
        assert!(matches!(
            p("/pods/a/mount", true),
            PublishAction::Conflict(_)
        ));
        assert!(matches!(
            p("/stage/foreign", false),
            PublishAction::Conflict(_)
        ));
        assert_eq!(
            decide_publish(&t, Path::new("/stage/v2"), Path::new("/x"), (7, 3), false),
            PublishAction::NotStaged
        );
        let b = |target: &str, dev: &str| {
            decide_publish_block(&t, Path::new(target), Path::new(dev), false)
        };
        assert_eq!(b("/pods/c/block", "/dev/loop4"), PublishAction::Done);
        assert!(matches!(
            b("/pods/c/block", "/dev/loop5"),
            PublishAction::Conflict(_)
        ));
        assert_eq!(b("/pods/d/block", "/dev/loop4"), PublishAction::Bind);
    }

    #[test]
    fn users() {
        let t = t();
        let u = users_of(&t, (7, 3), Path::new("/dev/loop3"), Path::new("/stage/v1"));
        assert_eq!(
            u,
            vec![
                PathBuf::from("/pods/a/mount"),
                PathBuf::from("/pods/b/mount")
            ]
        );
        let u = users_of(&t, (7, 4), Path::new("/dev/loop4"), Path::new("/stage/x"));
        assert_eq!(u, vec![PathBuf::from("/pods/c/block")]);
    }
}
