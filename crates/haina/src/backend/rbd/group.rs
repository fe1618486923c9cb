//! Group snapshots of an RBD pool: one point in time for every member,
//! then per-member snapshot images that restore like ordinary ones (clones
//! of `csi-snap-<member>@haina-restore`), made without copying the data.
//!
//! What Ceph 16.2 can and cannot do decides the shape:
//! - `rbd_group_snap_create` snapshots every image of an RBD group while it
//!   holds all their exclusive locks: crash-consistent across members. But
//!   the per-image snapshots it leaves are in the *group* namespace, and
//!   16.2 cannot clone from one (`rbd_clone3` takes a user snapshot name;
//!   cloning by snapshot id came with Reef), nor rename one.
//! - It must acquire every member's lock, and a client that holds a lock
//!   explicitly refuses to hand it over: haina's FUSE server does, for
//!   every single-writer attachment, so the group snapshot of a mounted
//!   volume fails with EROFS.
//! - An ordinary snapshot of a locked image is proxied to the lock owner,
//!   which flushes and cuts it: that works for mounted volumes.
//!
//! So the point in time is taken in one window, `csi-group-<object>` naming
//! everything of the group (its record image, its RBD group, the user
//! snapshot it takes of each source):
//! 1. freeze every member whose filesystem is mounted on this node (ID
//!    order; the guards thaw on every path): nothing writes to them;
//! 2. make the RBD group hold exactly the other members;
//! 3. take a user snapshot `S` of every source (`csi-vol-V@csi-group-G`);
//! 4. take the RBD group snapshot `P` (`haina-<time>`) of the group: the
//!    unfrozen members' point in time, atomic under their locks; thaw.
//!
//! Every member is unchanged from its `S` to `P` if it was frozen, and the
//! group's members are exactly at `P`, so all are at one point in time, `P`.
//! Then each member image is a clone (v2) of its source at `S`, and a group
//! member's clone is brought forward from `S` to `P` by writing the extents
//! that differ between them (`rbd_diff_iterate2` from `S`, read at `P` via
//! `rbd_snap_set_by_id`; librbd reports a superset of the changes, never
//! less): it costs the writes of the few milliseconds between `S` and `P`,
//! not a copy of the volume. Newer Ceph could clone from `P` by id instead.
//! A member attached here as a raw block device, or on another node, with
//! its lock held, cannot be paused: the group snapshot is
//! FAILED_PRECONDITION (the spec: "cannot snapshot multiple volumes
//! together"), naming it.
//!
//! Crash safety, with `haina.id`-last markers: the record image is written
//! first, as a journal (`haina.group`: name, members); a complete group
//! snapshot `P` in the RBD group is the commit of the point in time (its
//! name records when); each member image records `P` (`haina.point`) once
//! cloned and brought to `P`, then drops `S`, snapshots `haina-restore` and
//! gets `haina.id` last; the record gets `haina.id` last of all, then the
//! RBD group (with `P`) is removed. A retry finds the journal: without `P`
//! it removes whatever the attempt left and takes a new point in time; with
//! `P` it finishes the members. An error removes everything (all or none).
//! Members show (ListSnapshots, GetSnapshot) only while the record is
//! complete. Delete removes the record's `haina.id` first (the group and
//! its members vanish at once), then the members, the sources' `S`, the RBD
//! group, and the record last.

use std::collections::HashMap;

use haina_rbd::Image;
use serde::{Deserialize, Serialize};

use super::conn::Conn;
use super::meta::{self, Kind, Meta, SnapRecord};
use super::{MAX_GENERATIONS, RbdPool, Slot, to_json};
use crate::backend::{Backend, GroupSpec};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{GroupSnapshotId, SnapshotId, VolumeId};
use crate::volume::{GroupSnapshot, Secrets, Snapshot};

/// Bytes read and written per call when bringing a member to the point.
const CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    volume_id: String,
    snapshot_id: String,
}

/// `haina.group` on the record image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupRecord {
    name: String,
    members: Vec<Member>,
    /// The point in time; set when the group is complete.
    #[serde(default)]
    created: (i64, i32),
}

impl GroupRecord {
    /// The members as IDs.
    fn parsed(&self) -> Result<Vec<(VolumeId, SnapshotId)>> {
        self.members
            .iter()
            .map(|m| {
                Ok((
                    VolumeId::parse_existing("volume_id", &m.volume_id)?,
                    SnapshotId::parse_existing("snapshot_id", &m.snapshot_id)?,
                ))
            })
            .collect()
    }
}

/// What the record image of a group says.
enum Journal {
    None,
    /// Another haina pool's image of that name.
    Foreign(String),
    /// A create (or delete) in progress or cut short; `None` if cut short
    /// before the record was written.
    Pending(Option<GroupRecord>),
    Complete(GroupRecord),
}

/// The name of an RBD group snapshot taken at `t`.
fn point_name(t: (i64, i32)) -> String {
    format!("haina-{}-{:09}", t.0, t.1)
}

/// When an RBD group snapshot named by [`point_name`] was taken.
fn point_time(name: &str) -> Option<(i64, i32)> {
    let (s, n) = name.strip_prefix("haina-")?.split_once('-')?;
    Some((s.parse().ok()?, n.parse().ok()?))
}

fn lost(what: impl std::fmt::Display) -> Error {
    Error::internal(
        format!("group snapshot: the point in time of {what} is gone"),
        std::io::Error::other("the attempt is removed; a retry takes a new point in time"),
    )
}

impl RbdPool {
    /// `csi-group-<object>`: the record image, the RBD group and the
    /// sources' user snapshots of one group snapshot.
    fn group_name(id: &GroupSnapshotId) -> String {
        format!("{}{}", meta::GROUP_PREFIX, id.object())
    }

    fn read_journal(&self, c: &Conn, name: &str) -> Result<Journal> {
        let Some(img) = self.try_open_ro(c, name)? else {
            return Ok(Journal::None);
        };
        let m: Meta = self.read_meta(c, &img)?;
        if let Some(owner) = self.foreign_owner(&m) {
            return Ok(Journal::Foreign(owner));
        }
        let record = m
            .get(meta::KEY_GROUP)
            .map(|v| {
                serde_json::from_str::<GroupRecord>(v)
                    .map_err(|e| Error::internal(format!("image {name}: metadata haina.group"), e))
            })
            .transpose()?;
        Ok(match record {
            Some(r) if m.is_complete(name) => Journal::Complete(r),
            r => Journal::Pending(r),
        })
    }

    /// Whether a snapshot may be shown: not a group member, or a member of
    /// a complete group. `seen` caches answers for a listing.
    pub(super) fn member_visible(
        &self,
        c: &Conn,
        s: &Snapshot,
        seen: &mut HashMap<String, bool>,
    ) -> Result<bool> {
        let Some(g) = &s.group_snapshot_id else {
            return Ok(true);
        };
        if let Some(v) = seen.get(g) {
            return Ok(*v);
        }
        let visible = match GroupSnapshotId::parse_existing("group_snapshot_id", g) {
            Ok(id) if id.pool() == &self.name => matches!(
                self.read_journal(c, &Self::group_name(&id))?,
                Journal::Complete(_)
            ),
            _ => false,
        };
        seen.insert(g.clone(), visible);
        Ok(visible)
    }

    /// The group a complete record describes, with its members.
    fn group_of(&self, c: &Conn, id: &GroupSnapshotId, r: &GroupRecord) -> Result<GroupSnapshot> {
        let mut members = Vec::with_capacity(r.members.len());
        for m in &r.members {
            let sid = SnapshotId::parse_existing("snapshot_id", &m.snapshot_id)?;
            let s = match self.live(c, Kind::Snapshot, sid.object())? {
                Some((image, meta, _)) => meta.snapshot(&sid, &image)?,
                None => None,
            };
            members.push(s.ok_or_else(|| {
                Error::internal(
                    format!("group snapshot {id}"),
                    std::io::Error::other(format!("member snapshot {sid} is missing")),
                )
            })?);
        }
        Ok(GroupSnapshot {
            id: id.to_string(),
            name: r.name.clone(),
            members,
            created: r.created,
        })
    }

    pub(super) fn get_group(
        &self,
        id: &GroupSnapshotId,
        secrets: &Secrets,
    ) -> Result<Option<GroupSnapshot>> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        match self.read_journal(&c, &Self::group_name(id))? {
            Journal::Complete(r) => self.group_of(&c, id, &r).map(Some),
            _ => Ok(None),
        }
    }

    pub(super) fn create_group(
        &self,
        spec: &GroupSpec,
        secrets: &Secrets,
    ) -> Result<GroupSnapshot> {
        self.own(&spec.id)?;
        let c = self.conns.get(secrets)?;
        let name = Self::group_name(&spec.id);
        let wanted: Vec<Member> = spec
            .members
            .iter()
            .map(|(v, s)| Member {
                volume_id: v.to_string(),
                snapshot_id: s.to_string(),
            })
            .collect();
        let mut resume = false;
        match self.read_journal(&c, &name)? {
            Journal::Foreign(owner) => {
                return Err(Error::AlreadyExists(format!(
                    "group snapshot {}: image {}/{name} belongs to haina pool {owner:?}",
                    spec.id,
                    self.conns.addr().home()
                )));
            }
            Journal::Complete(r) => {
                let has: Vec<&str> = r.members.iter().map(|m| m.volume_id.as_str()).collect();
                if r.members != wanted {
                    return Err(Error::AlreadyExists(format!(
                        "group snapshot {} already exists for volumes [{}]",
                        spec.id,
                        has.join(", ")
                    )));
                }
                // A crash may have come between the record and the cleanup.
                self.drop_point(&c, &name)?;
                return self.group_of(&c, &spec.id, &r);
            }
            Journal::Pending(Some(r)) if r.members == wanted => resume = true,
            Journal::Pending(r) => {
                if let Some(r) = r {
                    tracing::info!(group = %spec.id, "removing an interrupted group snapshot of other volumes");
                    self.discard(&c, &name, &r, secrets)?;
                }
                self.ck(
                    &c,
                    || format!("removing {name}"),
                    c.io.remove_image(&name).or_else(ignore_missing),
                )?;
            }
            Journal::None => {}
        }
        let mut record = GroupRecord {
            name: spec.name.clone(),
            members: wanted,
            created: (0, 0),
        };
        if !resume {
            self.write_journal(&c, &name, &record)?;
        }
        let made =
            self.make_group(&c, spec, &name, resume, secrets)
                .and_then(|(point, members)| {
                    // The record, complete: from now on the group shows.
                    record.created = point_time(&point).unwrap_or_else(crate::volume::now_unix);
                    let img = self.open_rw(&c, &name)?;
                    self.write_meta(&c, &img, &[(meta::KEY_GROUP, to_json(&record)?)])?;
                    Ok((point, members))
                });
        let (point, members) = match made {
            Ok(r) => r,
            Err(e) => {
                // All or none.
                return Err(match self.discard_all(&c, &name, &record, secrets) {
                    Ok(()) => e,
                    Err(d) => e.context(format!(
                        "(removing the partial group snapshot failed too; a retry or \
                         DeleteVolumeGroupSnapshot cleans up: {d})"
                    )),
                });
            }
        };
        failpoint::hit("rbd-group-committed")?;
        self.drop_point(&c, &name)?;
        tracing::info!(group = %spec.id, members = members.len(), point, "group snapshot complete");
        Ok(GroupSnapshot {
            id: spec.id.to_string(),
            name: record.name,
            members,
            created: record.created,
        })
    }

    /// The record image as a journal: created empty, then the record, no
    /// `haina.id` (so nothing shows), and this pool as owner.
    fn write_journal(&self, c: &Conn, name: &str, r: &GroupRecord) -> Result<()> {
        match c.io.create_image(name, 0, self.features) {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => self.ck(c, || format!("creating image {name}"), Err(e))?,
        }
        let img = self.open_rw(c, name)?;
        let what = || format!("writing the metadata of {name}");
        self.ck(
            c,
            what,
            img.metadata_set(meta::KEY_POOL, self.name.as_str()),
        )?;
        self.ck(c, what, img.metadata_set(meta::KEY_GROUP, &to_json(r)?))
    }

    /// Takes (or finds) the point in time, then makes every member.
    fn make_group(
        &self,
        c: &Conn,
        spec: &GroupSpec,
        name: &str,
        resume: bool,
        secrets: &Secrets,
    ) -> Result<(String, Vec<Snapshot>)> {
        let committed = if resume {
            self.committed_point(c, name)?
        } else {
            None
        };
        let point = match committed {
            Some(p) => p,
            None => {
                if resume {
                    // Cut short before the point in time: start over.
                    self.discard_members(&spec.members, secrets)?;
                    self.drop_source_snaps(c, name, &spec.members)?;
                    self.drop_point(c, name)?;
                }
                self.take_point(c, spec, name)?
            }
        };
        let in_group = self.ck(
            c,
            || format!("images of group {name}"),
            c.io.group_image_list(name),
        )?;
        let mut members = Vec::with_capacity(spec.members.len());
        for i in 0..spec.members.len() {
            members.push(self.make_member(c, spec, i, name, &point, &in_group, secrets)?);
        }
        Ok((point, members))
    }

    /// The complete RBD group snapshot that fixed the point in time, if one
    /// was taken.
    fn committed_point(&self, c: &Conn, name: &str) -> Result<Option<String>> {
        let snaps = self.ck(
            c,
            || format!("snapshots of group {name}"),
            c.io.group_snap_list(name),
        )?;
        Ok(snaps
            .into_iter()
            .filter(|s| s.complete && point_time(&s.name).is_some())
            .map(|s| s.name)
            .max())
    }

    /// Steps 1-4 of the module doc: the point in time.
    fn take_point(&self, c: &Conn, spec: &GroupSpec, name: &str) -> Result<String> {
        match c.io.group_create(name) {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => self.ck(c, || format!("creating group {name}"), Err(e))?,
        }
        let mut sources = Vec::with_capacity(spec.members.len());
        for (vol, _) in &spec.members {
            let (src, _, _) = self
                .live(c, Kind::Volume, vol.object())?
                .ok_or_else(|| Error::NotFound(format!("source volume {vol} does not exist")))?;
            sources.push(src);
        }
        // 1. Freeze every member mounted here, in ID order.
        let mut frozen = Vec::new();
        let mut in_group = Vec::new();
        for ((vol, _), src) in spec.members.iter().zip(&sources) {
            match self.freeze_if_mounted_here(vol)? {
                Some(guard) => frozen.push(guard),
                None => in_group.push(src.clone()),
            }
        }
        // 2. The RBD group holds exactly the members that are not frozen.
        let current = self.ck(
            c,
            || format!("images of group {name}"),
            c.io.group_image_list(name),
        )?;
        for img in current.iter().filter(|i| !in_group.contains(i)) {
            self.ck(
                c,
                || format!("removing {img} from group {name}"),
                c.io.group_image_remove(name, img),
            )?;
        }
        for img in in_group.iter().filter(|i| !current.contains(i)) {
            self.ck(
                c,
                || format!("adding {img} to group {name}"),
                c.io.group_image_add(name, img),
            )?;
        }
        // 3. A user snapshot of every source.
        for src in &sources {
            let img = self.open_rw(c, src)?;
            self.ensure_snap(c, &img, name)?;
        }
        failpoint::hit("rbd-group-point")?;
        // 4. The group snapshot: the point in time.
        let point = point_name(crate::volume::now_unix());
        match c.io.group_snap_create(name, &point) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(haina_rbd::EROFS) => {
                return Err(Error::FailedPrecondition(format!(
                    "{}: their writes cannot be paused together (the exclusive lock is held, and \
                     no filesystem of theirs is mounted on this node to freeze); unstage them, \
                     or take the group snapshot where their filesystems are mounted",
                    self.lock_holders(c, spec, &in_group)
                )));
            }
            Err(e) => self.ck(c, || format!("snapshotting group {name}"), Err(e))?,
        }
        drop(frozen);
        Ok(point)
    }

    /// Names the members in `images` that some client has open, with the
    /// lock holder and the nodes their attach records name.
    fn lock_holders(&self, c: &Conn, spec: &GroupSpec, images: &[String]) -> String {
        let mut out = Vec::new();
        for (vol, _) in &spec.members {
            let Ok(Some((image, meta, _))) = self.live(c, Kind::Volume, vol.object()) else {
                continue;
            };
            if !images.contains(&image) {
                continue;
            }
            let Ok(img) = c.io.open(&image) else {
                continue;
            };
            let owners = img
                .lock_get_owners()
                .ok()
                .flatten()
                .map(|o| o.owners.join(", "));
            let watchers: Vec<_> = img
                .list_watchers()
                .unwrap_or_default()
                .into_iter()
                .filter(|w| w.id as u64 != c.instance_id())
                .collect();
            if owners.is_none() && watchers.is_empty() {
                continue;
            }
            let mut what = Vec::new();
            if let Some(o) = owners {
                what.push(format!("exclusive lock held by {o}"));
            }
            if !watchers.is_empty() {
                what.push(format!(
                    "open by {}",
                    meta::describe_watchers(&watchers, &meta.attachments())
                ));
            }
            out.push(format!("volume {vol} ({})", what.join("; ")));
        }
        if out.is_empty() {
            "a member's lock holder refused to release its exclusive lock (EROFS)".into()
        } else {
            out.join(", ")
        }
    }

    /// Makes member `i` (or finds it made) from its source's user snapshot,
    /// brought to the point in time if it was in the RBD group.
    #[allow(clippy::too_many_arguments)]
    fn make_member(
        &self,
        c: &Conn,
        spec: &GroupSpec,
        i: usize,
        name: &str,
        point: &str,
        in_group: &[String],
        secrets: &Secrets,
    ) -> Result<Snapshot> {
        let (vol, sid) = &spec.members[i];
        let (src, _, _) = self
            .live(c, Kind::Volume, vol.object())?
            .ok_or_else(|| lost(format!("volume {vol} (deleted)")))?;
        let mut image = None;
        for _ in 0..MAX_GENERATIONS {
            match self.resolve(c, Kind::Snapshot, sid.object())? {
                Slot::Foreign { image, owner } => {
                    return Err(Error::AlreadyExists(format!(
                        "member snapshot {sid}: image {image} belongs to haina pool {owner:?}"
                    )));
                }
                Slot::Present { image, meta, .. } if meta.is_complete(&image) => {
                    if meta.get(meta::KEY_POINT) == Some(point) {
                        return meta.snapshot(sid, &image)?.ok_or_else(|| lost(sid));
                    }
                    // From another point in time (an older attempt).
                    self.delete_snapshot(sid, secrets)?;
                }
                Slot::Present { image: found, .. } | Slot::Missing { image: found } => {
                    image = Some(found);
                    break;
                }
            }
        }
        let image = image.ok_or_else(|| lost(sid))?;
        let made = match self.try_open_ro(c, &image)? {
            Some(img) => self.read_meta(c, &img)?.get(meta::KEY_POINT) == Some(point),
            None => false,
        };
        if !made {
            let has_snap = self
                .try_open_ro(c, &src)?
                .map(|img| img.snap_exists(name))
                .transpose()
                .map_err(|e| Error::internal(format!("snapshots of {src}"), e))?
                .unwrap_or(false);
            if !has_snap {
                return Err(lost(format!("volume {vol} ({src}@{name})")));
            }
            self.ensure_clone(c, &src, name, &image)?;
            let img = self.open_rw(c, &image)?;
            if in_group.contains(&src) {
                self.bring_to_point(c, &src, name, point, &img)?;
            }
            self.ck(
                c,
                || format!("marking {image}"),
                img.metadata_set(meta::KEY_POINT, point),
            )?;
        }
        failpoint::hit(&format!("group-member-{i}"))?;
        self.drop_snap(c, &src, name)?;
        let img = self.open_rw(c, &image)?;
        self.limit_depth(c, &img)?;
        self.ensure_snap(c, &img, meta::RESTORE_SNAP)?;
        let size = self.ck(c, || format!("size of {image}"), img.size())?;
        let record = SnapRecord {
            name: spec.name.clone(),
            source_volume_id: vol.to_string(),
            size,
            created: point_time(point).unwrap_or((0, 0)),
            group_snapshot_id: Some(spec.id.to_string()),
        };
        self.write_meta(
            c,
            &img,
            &[
                (meta::KEY_SNAPSHOT, to_json(&record)?),
                (meta::KEY_POINT, point.to_string()),
            ],
        )?;
        Ok(record.snapshot(sid))
    }

    /// Writes into `dst` (a clone of `src@snap`) every extent that differs
    /// between `src@snap` and `src`'s part of the group snapshot `point`,
    /// read at `point`: `dst` then holds exactly `src` at `point`.
    fn bring_to_point(
        &self,
        c: &Conn,
        src: &str,
        snap: &str,
        point: &str,
        dst: &Image,
    ) -> Result<()> {
        let at = self.ck(c, || format!("opening {src}"), c.io.open_read_only(src))?;
        let what = || format!("{src} at group snapshot {snap}@{point}");
        let (id, size) = self
            .ck(c, what, at.group_snap(snap, point))?
            .ok_or_else(|| lost(what()))?;
        self.ck(c, what, at.set_snap_by_id(id))?;
        let extents = self.ck(c, what, at.diff_since(snap, size))?;
        if self.ck(c, what, dst.size())? != size {
            self.ck(c, what, dst.resize(size))?;
        }
        let mut buf = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        for (off, len, exists) in &extents {
            let end = (off + len).min(size);
            let mut pos = *off;
            while pos < end {
                let n = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
                let chunk = &mut buf[..n];
                if *exists {
                    let got = self.ck(c, what, at.read_at(pos, chunk))?;
                    chunk[got..].fill(0);
                } else {
                    chunk.fill(0);
                }
                self.ck(c, what, dst.write_at(pos, chunk))?;
                pos += n as u64;
                bytes += n as u64;
            }
        }
        self.ck(c, what, dst.flush())?;
        tracing::info!(
            image = dst.name(),
            source = src,
            point,
            extents = extents.len(),
            bytes,
            "brought a group member from its snapshot to the group's point in time"
        );
        Ok(())
    }

    /// Removes every member snapshot (one with restores is hidden until
    /// they are gone, like any snapshot).
    fn discard_members(&self, members: &[(VolumeId, SnapshotId)], secrets: &Secrets) -> Result<()> {
        for (_, sid) in members {
            self.delete_snapshot(sid, secrets)?;
        }
        Ok(())
    }

    /// Removes the user snapshot `name` from every generation of each
    /// source (also one deleted since, still kept as a parent).
    fn drop_source_snaps(
        &self,
        c: &Conn,
        name: &str,
        members: &[(VolumeId, SnapshotId)],
    ) -> Result<()> {
        for (vol, _) in members {
            for g in 0..MAX_GENERATIONS {
                let image = meta::image_name(Kind::Volume, vol.object(), g);
                if self.try_open_ro(c, &image)?.is_none() {
                    break;
                }
                self.drop_snap(c, &image, name)?;
            }
        }
        Ok(())
    }

    /// Removes the RBD group with its group snapshot (and so the members'
    /// group-namespace snapshots and links).
    fn drop_point(&self, c: &Conn, name: &str) -> Result<()> {
        self.ck(
            c,
            || format!("removing group {name}"),
            c.io.group_remove(name),
        )
    }

    /// Removes everything of a group but its record image.
    fn discard(&self, c: &Conn, name: &str, r: &GroupRecord, secrets: &Secrets) -> Result<()> {
        let members = r.parsed()?;
        self.discard_members(&members, secrets)?;
        self.drop_source_snaps(c, name, &members)?;
        self.drop_point(c, name)
    }

    /// Removes everything of a group, the record image last.
    fn discard_all(&self, c: &Conn, name: &str, r: &GroupRecord, secrets: &Secrets) -> Result<()> {
        self.discard(c, name, r, secrets)?;
        self.ck(
            c,
            || format!("removing {name}"),
            c.io.remove_image(name).or_else(ignore_missing),
        )
    }

    pub(super) fn delete_group(&self, id: &GroupSnapshotId, secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let name = Self::group_name(id);
        let record = match self.read_journal(&c, &name)? {
            Journal::None | Journal::Foreign(_) => return Ok(()),
            Journal::Complete(r) => {
                // First out of sight: the group and its members vanish at once.
                let img = self.open_rw(&c, &name)?;
                self.ck(
                    &c,
                    || format!("hiding {name}"),
                    img.metadata_remove(meta::KEY_ID),
                )?;
                Some(r)
            }
            Journal::Pending(r) => r,
        };
        failpoint::hit("rbd-group-delete-between")?;
        match record {
            Some(r) => self.discard_all(&c, &name, &r, secrets),
            None => self.ck(
                &c,
                || format!("removing {name}"),
                c.io.remove_image(&name).or_else(ignore_missing),
            ),
        }
    }
}

fn ignore_missing(e: haina_rbd::Error) -> haina_rbd::Result<()> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_carry_their_time() {
        let t = (1_700_000_000, 123_456_789);
        assert_eq!(point_name(t), "haina-1700000000-123456789");
        assert_eq!(point_time(&point_name(t)), Some(t));
        assert_eq!(point_time(&point_name((5, 7))), Some((5, 7)));
        assert_eq!(point_time("user-snap"), None);
        assert_eq!(point_time("haina-x-1"), None);
    }
}
