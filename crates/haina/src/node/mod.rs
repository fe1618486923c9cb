//! Node operations: stage (attach + format + mount), publish (bind mount),
//! their reverses, stats and online expansion.
//!
//! Links of the mount chain owned here (see docs/architecture.md):
//! - block device → filesystem at the staging path (`stage`), or, for a
//!   raw block volume, the device node bound at `<staging>/<volume-id>`;
//! - staging → pod target path, a bind mount (`publish`).
//!
//! Every operation is observe → decide → execute:
//! 1. [`view::observe`] reads the mount table and keeps the mounts the
//!    kernel shows are this volume's (its pool recognises the device);
//! 2. a pure function in [`decide`] turns that view, the node's
//!    [`record`] and the request into an outcome;
//! 3. a [`plan::Plan`] of host steps, each with its undo, runs through the
//!    [`Host`] (deadlines on every call in the real one).
//!
//! Safety rules this module enforces (docs/safety.md lists the tests):
//! - nothing is unmounted that the kernel does not show is this volume's,
//!   and `/` never is (paths are resolved first; `/` is refused);
//! - mkfs runs only on a device probed blank, or one holding a filesystem
//!   this node started making (its recorded UUID) that is still pristine;
//! - a volume is staged at one path only, and a raw block publish of a
//!   volume staged with a filesystem is refused;
//! - a stalled data path costs one call a deadline, and the retried
//!   unstage forces the teardown.

pub mod decide;
pub mod paths;
pub mod plan;
pub mod record;
#[cfg(test)]
mod tests;
pub mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use haina_sys::fs::{FsType, Probe};
use haina_sys::host::{FileKind, Host, SharedHost};

use self::decide::{Format, Publish, StageBlock, StageFs, Unpublish, Unstage};
use self::plan::{Plan, Step};
use self::record::Staged;
use self::view::{AtPath, View};
use crate::backend::{Attachment, Backend};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{VolumeId, echo_path};
use crate::volume::{AccessMode, AccessType, Capability, MIB, Secrets};

pub struct StageRequest<'a> {
    pub volume_id: &'a VolumeId,
    pub staging: &'a Path,
    pub capability: &'a Capability,
    pub context: &'a BTreeMap<String, String>,
    /// ControllerPublishVolume published the volume read-only (its
    /// `publish_context` says so): the filesystem is mounted read-only too.
    pub readonly: bool,
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

/// The mkfs arguments a volume's context asks for, allow-listed.
fn mkfs_args(fs: FsType, ctx: &BTreeMap<String, String>) -> Result<Vec<String>> {
    match ctx.get("mkfsOptions") {
        Some(raw) => crate::fsopts::mkfs_args(fs, "volume_context.mkfsOptions", raw),
        None => Ok(Vec::new()),
    }
}

/// The mount options for the staging mount: the capability's flags and the
/// context's `mountOptions`, allow-listed; `ro` and xfs's `nouuid` added.
fn mount_options(
    fs: FsType,
    cap_flags: &[String],
    ctx: &BTreeMap<String, String>,
    writable: bool,
) -> Result<Vec<String>> {
    let mut opts =
        crate::fsopts::mount_options(fs, "volume_capability.mount.mount_flags", cap_flags)?;
    if let Some(o) = ctx.get("mountOptions") {
        let listed: Vec<String> = o
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        opts.extend(crate::fsopts::mount_options(
            fs,
            "volume_context.mountOptions",
            &listed,
        )?);
    }
    if !writable {
        opts.push("ro".into());
    }
    if fs == FsType::Xfs {
        // Clones and restores share their source's UUID; nouuid lets both mount.
        opts.push("nouuid".into());
    }
    Ok(opts)
}

/// The node's record for a stage at `staging`, written durably before the
/// first change when it is missing or stale. The bool is true when this
/// call created it (see [`forget_failed`]).
fn ensure_record(
    d: &Driver,
    id: &VolumeId,
    staging: &Path,
    block: bool,
    view: &View,
) -> Result<(Staged, bool)> {
    let current = record::read(d, id)?;
    if let Some(r) = &current
        && r.staging == staging
        && r.block == block
    {
        return Ok((r.clone(), false));
    }
    // A new volume on this node takes one of its `max_volumes_per_node`
    // slots: counted and claimed under one lock, so two concurrent stages
    // cannot both take the last one.
    let _slots = d.slots.lock().unwrap_or_else(|p| p.into_inner());
    if current.is_none() && d.max_volumes_per_node > 0 {
        let staged = record::staged(d)?;
        if staged.len() as i64 >= d.max_volumes_per_node {
            return Err(Error::ResourceExhausted(format!(
                "node {} already has {} volumes staged, its max_volumes_per_node; unstage                  one first (staged: {})",
                d.node_id,
                staged.len(),
                staged.join(", ")
            )));
        }
    }
    // A record for another path is stale only when nothing of the volume is
    // mounted any more (the decisions before refused the live cases).
    let created = current.is_none();
    let mkfs_uuid = match current {
        Some(r) if view.held().next().is_none() || r.staging == staging => r.mkfs_uuid,
        _ => d.host.new_uuid()?,
    };
    let rec = Staged {
        staging: staging.to_path_buf(),
        block,
        mkfs_uuid,
    };
    record::write(d, id, &rec)?;
    Ok((rec, created))
}

/// After a failed stage: a record this call created goes again when the
/// failure left nothing of the volume on this node and no mkfs can have
/// started (whose UUID the record must keep). Otherwise the CO's retry or
/// unstage finds it. Keeps failed stages from holding attach-limit slots.
fn forget_failed(
    d: &Driver,
    backend: &dyn Backend,
    id: &VolumeId,
    created: bool,
    mkfs_ran: bool,
    result: Result<()>,
) -> Result<()> {
    if let Err(e) = &result
        && created
        && !mkfs_ran
        && !matches!(e, Error::Stalled(_))
        && backend.attachment(id).ok().flatten().is_none()
        && let Err(undo) = record::remove(d, id)
    {
        tracing::warn!(volume = %id, error = %undo, "removing the record of a failed stage");
    }
    result
}

/// Fails when the attachment's data path is dead or stalled: a stage or
/// publish over it would hand a pod I/O errors.
fn check_data_path(backend: &dyn Backend, id: &VolumeId, att: &Attachment) -> Result<()> {
    match backend.data_path_health(id, att) {
        None => Ok(()),
        Some(why) => Err(Error::FailedPrecondition(format!(
            "volume {id}'s data path on this node is broken ({why}); unstage it \
             (NodeUnstageVolume) and stage it again to recover"
        ))),
    }
}

pub fn stage(
    d: &Driver,
    backend: &dyn Backend,
    req: &StageRequest<'_>,
    secrets: &Secrets,
) -> Result<()> {
    let host = d.host.as_ref();
    let id = req.volume_id;
    backend.check_capability(req.capability)?;
    let staging = paths::resolve(host, "staging_target_path", req.staging, true)?
        .unwrap_or_else(|| req.staging.to_path_buf());
    let staging_exists = match host.lstat(&staging)? {
        None => false,
        Some(FileKind::Dir) => true,
        Some(_) => {
            return Err(Error::InvalidArgument(format!(
                "staging_target_path {} exists and is not a directory",
                echo_path(req.staging)
            )));
        }
    };
    let view = view::observe(host, backend, id)?;
    match &req.capability.access {
        AccessType::Block => stage_block(d, backend, req, secrets, &staging, staging_exists, view),
        AccessType::Mount {
            fs_type,
            mount_flags,
        } => {
            // Everything the request says is checked before anything changes.
            let wanted = fs_of(fs_type, req.context)?;
            let writable = !req.capability.mode.is_read_only() && !req.readonly;
            let options = mount_options(wanted, mount_flags, req.context, writable)?;
            let args = mkfs_args(wanted, req.context)?;
            let explicit = !fs_type.is_empty() || req.context.contains_key("fsType");
            let fs = FsRequest {
                wanted,
                explicit,
                writable,
                options,
                args,
            };
            stage_fs(
                d,
                backend,
                req,
                secrets,
                &staging,
                staging_exists,
                view,
                &fs,
            )
        }
    }
}

/// A filesystem stage's checked parameters.
struct FsRequest {
    wanted: FsType,
    explicit: bool,
    writable: bool,
    options: Vec<String>,
    args: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn stage_fs(
    d: &Driver,
    backend: &dyn Backend,
    req: &StageRequest<'_>,
    secrets: &Secrets,
    staging: &Path,
    staging_exists: bool,
    view: View,
    fs: &FsRequest,
) -> Result<()> {
    let host = d.host.as_ref();
    let id = req.volume_id;
    match decide::stage_fs(&view, staging) {
        StageFs::Done(held) => {
            // Already staged: look at the attachment (never make a second
            // one over a deleted image), then re-adopt it, which restores
            // per-device state a failed unstage may have released.
            if let Some(att) = backend.attachment(id)? {
                check_data_path(backend, id, &att)?;
            }
            let att = backend.attach(id, secrets)?;
            check_data_path(backend, id, &att)?;
            // Staged already, but not the way this request asks: the
            // spec's ALREADY_EXISTS (an incompatible capability).
            if fs.explicit && held.fs_type != fs.wanted.as_str() {
                return Err(Error::AlreadyExists(format!(
                    "volume {id} is staged at {} with {}, not the requested {}",
                    staging.display(),
                    held.fs_type,
                    fs.wanted.as_str()
                )));
            }
            if held.read_only == fs.writable {
                return Err(Error::AlreadyExists(format!(
                    "volume {id} is staged at {} {}; this request asks for it {}",
                    staging.display(),
                    if held.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if fs.writable {
                        "read-write"
                    } else {
                        "read-only"
                    }
                )));
            }
            if held.fs_errors {
                return Err(Error::FailedPrecondition(format!(
                    "the filesystem of volume {id} at {} turned read-only after I/O errors; \
                     unstage it and stage it again",
                    staging.display()
                )));
            }
            // A stage interrupted between mount and autoclear, or made by
            // an older haina: set it now (idempotent; a device that has it
            // costs one LOOP_GET_STATUS64).
            let mut plan = Plan::new();
            if leaves_with_its_mount(&att) {
                plan.then_keep(Step::Autoclear(att.device.clone()));
            }
            if fs.writable
                && let Ok(found) = held.fs_type.parse::<FsType>()
            {
                grow_online(host, &att.device, staging, found, &mut plan)?;
            }
            plan.execute(host)?;
            return Ok(());
        }
        StageFs::Occupied(what) => {
            return Err(Error::AlreadyExists(format!(
                "staging_target_path {} already has {what} mounted",
                staging.display()
            )));
        }
        StageFs::Elsewhere(paths) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is already staged on this node (mounted at {}); a volume has one \
                 staging path per node: unstage it there first",
                join(&paths)
            )));
        }
        StageFs::AsBlock(p) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is staged as a raw block device at {}; unstage it before staging \
                 it with a filesystem",
                p.display()
            )));
        }
        StageFs::Mount => {}
    }
    let (rec, created) = ensure_record(d, id, staging, false, &view)?;
    let mut mkfs_ran = false;
    let result = backend.attach(id, secrets).and_then(|att| {
        let staged = check_data_path(backend, id, &att).and_then(|()| {
            mount_staging(
                d,
                backend,
                id,
                staging,
                staging_exists,
                &att,
                &rec,
                fs,
                &mut mkfs_ran,
            )
        });
        undo_attach(backend, id, &att, staged)
    });
    forget_failed(d, backend, id, created, mkfs_ran, result)
}

/// Whether a filesystem volume's loop device is set to detach itself with
/// its last mount. Only a loop over a FUSE-served image needs it: once that
/// FUSE mount is gone (say, with the mount namespace that held it) the
/// kernel shows the backing file as `/image`, no path finds the device any
/// more, and nothing else could ever detach it. A local image keeps its
/// path, so unstage always finds its device — and setting the flag costs a
/// LOOP_SET_STATUS64, which freezes the device's queue (~30 ms).
fn leaves_with_its_mount(att: &Attachment) -> bool {
    att.mounter == "fuse"
}

/// Rolls back a new attachment when the stage failed after it.
fn undo_attach(
    backend: &dyn Backend,
    id: &VolumeId,
    att: &Attachment,
    result: Result<()>,
) -> Result<()> {
    match result {
        Err(e) if att.newly_attached => match backend.detach(id) {
            Ok(()) => Err(e),
            Err(undo) => Err(e.context(format!(
                "(and detaching {} failed: {undo})",
                att.device.display()
            ))),
        },
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
fn mount_staging(
    d: &Driver,
    backend: &dyn Backend,
    id: &VolumeId,
    staging: &Path,
    staging_exists: bool,
    att: &Attachment,
    rec: &Staged,
    fs: &FsRequest,
    mkfs_ran: &mut bool,
) -> Result<()> {
    let host = d.host.as_ref();
    let dev = &att.device;
    let probe = if backend.is_blank(id)? {
        Probe::Blank
    } else {
        host.probe(dev)
            .map_err(|e| Error::from(e).context(format!("probing {}", dev.display())))?
    };
    let sb = match &probe {
        Probe::Filesystem { .. } => host.superblock(dev)?,
        _ => None,
    };
    let mut plan = Plan::new();
    let found = match decide::format(&probe, sb.as_ref(), &rec.mkfs_uuid, fs.wanted, fs.explicit) {
        Format::Make => {
            *mkfs_ran = true;
            plan.then_keep(Step::Mkfs {
                dev: dev.clone(),
                fs: fs.wanted,
                args: fs.args.clone(),
                uuid: rec.mkfs_uuid.clone(),
            });
            None
        }
        Format::Use(found) => Some(found),
        Format::Refuse(why) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} ({}): {why}",
                dev.display()
            )));
        }
    };
    let fs_type = found.unwrap_or(fs.wanted);
    let mut options = fs.options.clone();
    if found.is_some_and(|f| f != fs.wanted) {
        // The options were checked for the requested filesystem.
        options = crate::fsopts::mount_options(fs_type, "mount options", &options)?;
    }
    if !staging_exists {
        plan.then(Step::CreateDir(staging.to_path_buf()));
    }
    // A restored, cloned or expanded volume: grow to fill the device.
    let needs_grow = match (&sb, found) {
        (Some(sb), Some(_)) => sb.size + MIB <= host.device_size(dev)?,
        _ => false,
    };
    if fs.writable && needs_grow && fs_type == FsType::Ext4 {
        // Offline, before the mount: needs no CAP_SYS_RESOURCE and cannot
        // race a writer.
        plan.then_keep(Step::GrowOffline { dev: dev.clone() });
    }
    plan.then(Step::Mount {
        dev: dev.clone(),
        target: staging.to_path_buf(),
        fs: fs_type,
        options,
    });
    if leaves_with_its_mount(att) {
        // From here the mount holds the loop device: however it goes, the
        // device goes with it (a dead mount namespace included).
        plan.then_keep(Step::Autoclear(dev.clone()));
    }
    if fs.writable && needs_grow && fs_type == FsType::Xfs {
        plan.then_keep(Step::GrowOnline {
            dev: dev.clone(),
            mount_point: staging.to_path_buf(),
            fs: fs_type,
        });
    }
    plan.execute(host)
}

/// Adds an online grow when the device is at least 1 MiB larger than the
/// filesystem (read from the superblock: the common case spawns nothing).
fn grow_online(
    host: &dyn Host,
    dev: &Path,
    mount_point: &Path,
    fs: FsType,
    plan: &mut Plan,
) -> Result<()> {
    let Some(sb) = host.superblock(dev)? else {
        return Ok(());
    };
    if sb.size + MIB <= host.device_size(dev)? {
        tracing::info!(device = %dev.display(), fs_size = sb.size, "growing filesystem online");
        plan.then_keep(Step::GrowOnline {
            dev: dev.to_path_buf(),
            mount_point: mount_point.to_path_buf(),
            fs,
        });
    }
    Ok(())
}

fn stage_block(
    d: &Driver,
    backend: &dyn Backend,
    req: &StageRequest<'_>,
    secrets: &Secrets,
    staging: &Path,
    staging_exists: bool,
    view: View,
) -> Result<()> {
    let host = d.host.as_ref();
    let id = req.volume_id;
    let file = record::block_staging_file(staging, id);
    let recorded = record::read(d, id)?.map(|r| record::block_staging_file(&r.staging, id));
    match decide::stage_block(&view, &file, recorded.as_deref()) {
        StageBlock::Done => {
            let att = match backend.attachment(id)? {
                Some(att) => att,
                None => backend.attach(id, secrets)?,
            };
            return check_data_path(backend, id, &att);
        }
        StageBlock::Occupied(what) => {
            return Err(Error::AlreadyExists(format!(
                "{} already has {what} mounted",
                file.display()
            )));
        }
        StageBlock::AsFilesystem(p) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is mounted with a filesystem at {}; a raw block stage would expose \
                 the device under a mounted filesystem",
                p.display()
            )));
        }
        StageBlock::Elsewhere(p) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is already staged on this node at {}; unstage it there first",
                p.display()
            )));
        }
        StageBlock::Bind => {}
    }
    let (_, created) = ensure_record(d, id, staging, true, &view)?;
    let result = backend.attach(id, secrets).and_then(|att| {
        let staged = check_data_path(backend, id, &att).and_then(|()| {
            let mut plan = Plan::new();
            if !staging_exists {
                plan.then(Step::CreateDir(staging.to_path_buf()));
            }
            if host.lstat(&file)?.is_none() {
                plan.then(Step::CreateFile(file.clone()));
            }
            plan.then(Step::Bind {
                source: att.device.clone(),
                target: file.clone(),
            });
            plan.execute(host)
        });
        undo_attach(backend, id, &att, staged)
    });
    forget_failed(d, backend, id, created, false, result)
}

pub fn unstage(d: &Driver, backend: &dyn Backend, id: &VolumeId, staging: &Path) -> Result<()> {
    match teardown(d, backend, id, staging) {
        Err(Error::Stalled(m)) => {
            // Whatever stalled, the next unstage of this volume forces its
            // way through if the data path is still hung then.
            d.mark_stalled(id);
            Err(Error::Stalled(format!(
                "{m}; volume {id}'s data path is hung. Retry NodeUnstageVolume: if it is still \
                 hung, the retry forces the teardown (lazy unmount, data path aborted; writes \
                 not yet flushed are lost)"
            )))
        }
        Err(e) => Err(e),
        Ok(()) => {
            d.clear_stalled(id);
            record::remove(d, id)
        }
    }
}

fn teardown(d: &Driver, backend: &dyn Backend, id: &VolumeId, staging: &Path) -> Result<()> {
    let host = d.host.as_ref();
    let staging = paths::resolve(host, "staging_target_path", staging, false)?
        .unwrap_or_else(|| staging.to_path_buf());
    let file = record::block_staging_file(&staging, id);
    let rec = record::read(d, id)?;
    let view = view::observe(host, backend, id)?;
    let mounts = match decide::unstage(
        &view,
        &staging,
        &file,
        rec.as_ref().map(|r| r.staging.as_path()),
    ) {
        Unstage::NotHere(at) => {
            tracing::info!(volume = %id, staging = %staging.display(), staged_at = %at.display(),
                "unstage of a path the volume is not staged at: nothing to do");
            return Ok(());
        }
        Unstage::InUse(paths) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still published at {}; unpublish it first",
                join(&paths)
            )));
        }
        Unstage::Covered(what) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id}'s staging mount is covered by a mount it does not own ({what}); \
                 haina unmounts nothing of someone else's: unmount that first"
            )));
        }
        Unstage::Teardown(mounts) => mounts,
    };
    // A data path already known dead (a killed FUSE server, a deleted
    // image): the unmounts fail their writes fast, and the detach must not
    // wait on the dead path.
    let dead = match backend.attachment(id)? {
        Some(att) => backend.data_path_health(id, &att),
        None => None,
    };
    if let Some(why) = &dead {
        tracing::warn!(volume = %id, why, "unstaging a volume whose data path is broken");
    }
    if !mounts.is_empty() {
        // Per-device state goes while the device still exists (a loop
        // device may leave with its last mount).
        backend.release(id)?;
    }
    let mut forced = false;
    for m in &mounts {
        let unmount = Step::Unmount {
            target: m.clone(),
            lazy: false,
        };
        match thaw_leftover(host, m, &file).and_then(|()| unmount.run(host)) {
            Ok(()) => {}
            // A previous unstage stalled and this one does too: the data
            // path is still hung, so force it. Unflushed writes are lost —
            // which is why it is never the first attempt.
            Err(Error::Stalled(why)) if d.is_stalled(id) => {
                tracing::warn!(volume = %id, mount = %m.display(), why,
                    "the data path is still hung: unmounting lazily and forcing the teardown");
                forced = true;
                Step::Unmount {
                    target: m.clone(),
                    lazy: true,
                }
                .run(host)?;
            }
            Err(e) => {
                // Still mounted: give back what release() took (limits).
                if let Err(undo) = backend.attach(id, &Secrets::default()) {
                    tracing::warn!(volume = %id, error = %undo,
                        "restoring the volume's device state after a failed unstage");
                }
                return Err(e);
            }
        }
    }
    // The block stage's bind target (named after the volume). Looked at
    // only once nothing of the volume is mounted over the staging path: a
    // lookup through a mounted volume reads its data path.
    let is_block = rec.as_ref().is_some_and(|r| r.block) || mounts.contains(&file);
    if is_block || matches!(host.lstat(&file)?, Some(FileKind::File(_))) {
        Step::RemoveFile(file.clone()).run(host)?;
    }
    failpoint::hit("unstage-before-detach")?;
    if forced || dead.is_some() {
        backend.force_detach(id)
    } else {
        backend.detach(id)
    }
}

/// Thaws a staging filesystem left frozen (a snapshot cut short by
/// `kill -9` inside its freeze window, or an operator's `fsfreeze`) before
/// it is unmounted: unmounted frozen, its superblock would outlive the
/// mount, frozen, with no path left to thaw it, and hold the device
/// forever. No snapshot of ours can be inside its freeze window here: it
/// holds this volume's in-flight guard. On a filesystem that is not frozen
/// this is one ioctl that does nothing; the block stage's bind is skipped.
fn thaw_leftover(host: &dyn Host, mount: &Path, block_file: &Path) -> Result<()> {
    if mount == block_file {
        return Ok(());
    }
    host.thaw(mount)
        .map_err(|e| Error::from(e).context(format!("thawing {}", mount.display())))
}

pub struct PublishRequest<'a> {
    pub volume_id: &'a VolumeId,
    pub staging: &'a Path,
    pub target: &'a Path,
    pub capability: &'a Capability,
    pub readonly: bool,
}

pub fn publish(d: &Driver, backend: &dyn Backend, req: &PublishRequest<'_>) -> Result<()> {
    let host = d.host.as_ref();
    let id = req.volume_id;
    backend.check_capability(req.capability)?;
    let block = req.capability.is_block();
    if let AccessType::Mount {
        fs_type,
        mount_flags,
    } = &req.capability.access
    {
        let fs = fs_of(fs_type, &BTreeMap::new()).unwrap_or(FsType::Ext4);
        crate::fsopts::mount_options(fs, "volume_capability.mount.mount_flags", mount_flags)?;
    }
    let not_staged = |why: String| {
        Error::FailedPrecondition(format!(
            "volume {id} is not staged at {}: {why}",
            echo_path(req.staging)
        ))
    };
    let staging = paths::resolve(host, "staging_target_path", req.staging, false)?
        .ok_or_else(|| not_staged("the path does not exist".into()))?;
    let target = paths::resolve(host, "target_path", req.target, true)?
        .unwrap_or_else(|| req.target.to_path_buf());
    if paths::nested(&target, &staging) {
        return Err(Error::InvalidArgument(format!(
            "target_path {} and staging_target_path {} overlap; a volume is published outside \
             its staging path",
            echo_path(req.target),
            echo_path(req.staging)
        )));
    }
    let source = if block {
        record::block_staging_file(&staging, id)
    } else {
        staging.clone()
    };
    let view = view::observe(host, backend, id)?;
    let readonly = req.readonly || req.capability.mode.is_read_only();
    match decide::publish(&view, &source, &target, block, readonly) {
        Publish::Done => return Ok(()),
        Publish::NotStaged(why) => return Err(not_staged(why)),
        Publish::Conflict(m) => return Err(Error::AlreadyExists(m)),
        Publish::Bind => {}
    }
    if req.capability.mode == AccessMode::SingleNodeSingleWriter
        && let Some(other) = view.elsewhere(&[&source]).next()
    {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} has access mode SINGLE_NODE_SINGLE_WRITER and is already published at {}",
            other.mount_point.display()
        )));
    }
    if let Some(att) = backend.attachment(id)? {
        check_data_path(backend, id, &att)?;
    }
    let mut plan = Plan::new();
    match (host.lstat(&target)?, block) {
        (None, false) => {
            plan.then(Step::CreateDir(target.clone()));
        }
        (None, true) => {
            plan.then(Step::CreateFile(target.clone()));
        }
        (Some(FileKind::Dir), false) | (Some(FileKind::File(_)), true) => {}
        // Some COs pre-create a directory even for block volumes; an empty one can go.
        (Some(FileKind::Dir), true) if host.dir_is_empty(&target)? => {
            plan.then_keep(Step::RemoveDir(target.clone()));
            plan.then(Step::CreateFile(target.clone()));
        }
        (Some(_), _) => {
            return Err(Error::FailedPrecondition(format!(
                "target_path {} exists and is not {}",
                echo_path(req.target),
                if block {
                    "a file (or an empty directory)"
                } else {
                    "a directory"
                }
            )));
        }
    }
    plan.then(Step::Bind {
        source,
        target: target.clone(),
    });
    if readonly {
        // Never leave a writable bind behind: a failed remount undoes the bind.
        plan.then_keep(Step::RemountReadOnly(target));
    }
    plan.execute(host)
}

/// NodeUnpublishVolume: unmounts only the volume's own mounts at `target`
/// (as the kernel shows them), then removes the target the publish made.
/// A foreign mount, another volume's, or the volume's staging mount is
/// left untouched (the spec's OK: the volume is not published there).
pub fn unpublish(d: &Driver, backend: &dyn Backend, id: &VolumeId, target: &Path) -> Result<()> {
    let host = d.host.as_ref();
    let Some(target) = paths::resolve(host, "target_path", target, false)? else {
        return Ok(()); // its parent is gone: nothing can be there
    };
    let staging = record::read(d, id)?.map(|r| r.staging);
    let view = view::observe(host, backend, id)?;
    let mut plan = Plan::new();
    match decide::unpublish(&view, &target, staging.as_deref()) {
        Unpublish::Leave(why) => {
            tracing::warn!(volume = %id, target = %target.display(), why,
                "unpublish: the volume is not published there; leaving it untouched");
            return Ok(());
        }
        Unpublish::Unmount(n) => {
            for _ in 0..n {
                plan.then_keep(Step::Unmount {
                    target: target.clone(),
                    lazy: false,
                });
            }
        }
        Unpublish::Remove => {}
    }
    plan.execute(host)?;
    // The target the publish created: an empty directory or file.
    match host.lstat(&target)? {
        None => Ok(()),
        Some(FileKind::Dir) if host.dir_is_empty(&target)? => Step::RemoveDir(target).run(host),
        Some(FileKind::File(0)) => Step::RemoveFile(target).run(host),
        Some(_) => {
            tracing::warn!(target = %target.display(),
                "unpublish: the target is not an empty directory or file; leaving it");
            Ok(())
        }
    }
}

/// Usage and condition for NodeGetVolumeStats.
pub struct Stats {
    pub bytes: (u64, u64, u64),
    pub inodes: Option<(u64, u64, u64)>,
    pub abnormal: Option<String>,
}

/// `att` is the volume's attachment on this node, as the caller found it.
/// Every check is bounded in time: a hung volume reports abnormal.
pub fn stats(
    d: &Driver,
    backend: &dyn Backend,
    id: &VolumeId,
    path: &Path,
    att: Option<Attachment>,
) -> Result<Stats> {
    let host = d.host.as_ref();
    let missing = || Error::NotFound(format!("volume_path {} does not exist", echo_path(path)));
    let resolved = paths::resolve(host, "volume_path", path, false)?.ok_or_else(missing)?;
    let kind = host.lstat(&resolved)?.ok_or_else(missing)?;
    let abnormal = |why: String| Stats {
        bytes: (0, 0, 0),
        inodes: None,
        abnormal: Some(why),
    };
    let Some(att) = att else {
        return Ok(abnormal(format!(
            "volume {id} has no block device attached on this node"
        )));
    };
    let view = view::observe(host, backend, id)?;
    let held = match view.at(&resolved) {
        AtPath::Ours(h) => h,
        AtPath::Foreign(what) => {
            return Ok(abnormal(format!(
                "{} has {what} mounted, not volume {id}",
                path.display()
            )));
        }
        AtPath::Nothing => {
            return Ok(abnormal(format!(
                "{} is not a mount point: the volume's mount is gone",
                path.display()
            )));
        }
    };
    let health = backend.data_path_health(id, &att).or_else(|| {
        held.fs_errors
            .then(|| "the filesystem turned read-only after I/O errors".to_string())
    });
    if held.devnode || kind != FileKind::Dir {
        return Ok(match host.device_size(&att.device) {
            Ok(size) => Stats {
                bytes: (size, 0, 0),
                inodes: None,
                abnormal: health,
            },
            Err(e) => abnormal(health.unwrap_or_else(|| e.to_string())),
        });
    }
    if let Some(why) = health {
        // Do not even statvfs a volume whose data path is known bad.
        return Ok(abnormal(why));
    }
    match host.statvfs(&resolved) {
        Ok(u) => Ok(Stats {
            bytes: (u.bytes_total, u.bytes_used, u.bytes_available),
            inodes: Some((u.inodes_total, u.inodes_used, u.inodes_free)),
            abnormal: None,
        }),
        Err(e) if e.is_stalled() => Ok(abnormal(format!("the volume's data path is hung: {e}"))),
        Err(e) => Ok(abnormal(format!("statvfs failed: {e}"))),
    }
}

/// NodeExpandVolume: make the device see the new size and grow the filesystem.
pub fn expand(
    d: &Driver,
    backend: &dyn Backend,
    id: &VolumeId,
    volume_path: &Path,
    block: bool,
    att: Option<Attachment>,
) -> Result<u64> {
    let host = d.host.as_ref();
    let att = att.ok_or_else(|| {
        Error::FailedPrecondition(format!("volume {id} is not staged on this node"))
    })?;
    check_data_path(backend, id, &att)?;
    let size = backend.refresh_size(id)?;
    if block {
        return Ok(size);
    }
    let not_ours = || {
        Error::NotFound(format!(
            "volume_path {} is not a mount of volume {id}",
            echo_path(volume_path)
        ))
    };
    let path = paths::resolve(host, "volume_path", volume_path, false)?.ok_or_else(not_ours)?;
    let view = view::observe(host, backend, id)?;
    let AtPath::Ours(held) = view.at(&path) else {
        return Err(not_ours());
    };
    if held.devnode {
        return Ok(size);
    }
    let fs: FsType = held.fs_type.parse().map_err(|_| {
        Error::FailedPrecondition(format!("cannot grow a {} filesystem", held.fs_type))
    })?;
    let mut plan = Plan::new();
    grow_online(host, &att.device, &path, fs, &mut plan)?;
    plan.execute(host)?;
    Ok(size)
}

/// A filesystem frozen for a snapshot; thawed when dropped, on every path.
#[must_use = "the filesystem thaws when the guard is dropped"]
pub struct FreezeGuard {
    host: SharedHost,
    mount_point: PathBuf,
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if let Err(e) = self.host.thaw(&self.mount_point) {
            tracing::error!(mount_point = %self.mount_point.display(), error = %e,
                "could not thaw filesystem");
        }
    }
}

/// Freezes the filesystem on `device` if it is mounted on this node, so
/// that a snapshot or copy taken now is filesystem-consistent. One that is
/// already frozen (EBUSY) is taken over: the guard thaws it.
pub fn freeze_if_mounted(host: &SharedHost, device: &Path) -> Result<Option<FreezeGuard>> {
    let Some(FileKind::BlockDevice(major, minor)) = host.lstat(device)? else {
        return Ok(None);
    };
    let table = host.mount_table()?;
    let Some(mount) = table
        .mounts_of_dev(major, minor)
        .into_iter()
        .find(|m| m.root == Path::new("/"))
    else {
        return Ok(None);
    };
    match host.freeze(&mount.mount_point) {
        Ok(()) => {}
        // Already frozen: by an operation that `kill -9` cut short inside
        // its freeze window (nothing thaws it then), or by someone else.
        // Take the freeze over, so that it is thawed when this one is done,
        // which is what lets a retried snapshot converge.
        Err(e) if e.errno() == Some(rustix::io::Errno::BUSY) => {
            tracing::warn!(mount_point = %mount.mount_point.display(),
                "filesystem was already frozen (a snapshot interrupted by a crash?); \
                 it is thawed when this snapshot is done");
        }
        Err(e) => {
            return Err(Error::from(e).context(format!("freezing {}", mount.mount_point.display())));
        }
    }
    Ok(Some(FreezeGuard {
        host: Arc::clone(host),
        mount_point: mount.mount_point.clone(),
    }))
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
