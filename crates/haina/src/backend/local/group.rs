//! Group snapshots of a local pool: every member volume copied (reflink, or
//! sparse copy) while all of them are frozen, so the copies are one point
//! in time.
//!
//! ```text
//! groups/<object>.json        the group's record: name, members, state
//! snapshots/<member>.img      each member, an ordinary snapshot image
//! snapshots/<member>.json     with the group's ID in its record
//! ```
//!
//! Create, in this order:
//! 1. reserve the space of every member at once (what an ordinary snapshot
//!    of each would cost), or RESOURCE_EXHAUSTED with nothing left;
//! 2. write the record, state `creating`: the journal a retry or a delete
//!    finds everything by;
//! 3. freeze every member mounted on this node, in volume-ID order (a
//!    member attached here without a filesystem to freeze is
//!    FAILED_PRECONDITION: its writes could not be paused); the guards thaw
//!    on every path, errors included;
//! 4. copy each member into its snapshot image (temp name, then rename) and
//!    write its snapshot record;
//! 5. thaw, then rewrite the record as `complete`.
//!
//! A member is visible (ListSnapshots, GetSnapshot, a restore's source)
//! only while its group's record says `complete`, so no member shows
//! before its group is whole. An error removes every member made and the
//! journal (all or none); `kill -9` leaves the journal, and the retried
//! create (same name) removes what it lists and starts over: the copies of
//! one attempt are all from one freeze window, a retry's from another, and
//! mixing them would break the point in time. A filesystem a crash left
//! frozen is taken over and thawed by the retry
//! ([`crate::node::freeze_if_mounted`]).
//!
//! Delete unlinks the record first (the group and its members vanish at
//! once, and nothing needs free space), then removes every snapshot whose
//! record names the group; a retry after a crash finds those by the same
//! scan.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LocalPool, io_err, make_dir_durable, remove_files, space};
use crate::backend::GroupSpec;
use crate::backend::copy::{self, CopyMethod};
use crate::error::{Error, Result};
use crate::ids::{GroupSnapshotId, SnapshotId};
use crate::volume::{GroupSnapshot, Snapshot, Volume};
use crate::{failpoint, state};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    /// The journal of a create in progress (or cut short).
    Creating,
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    volume_id: String,
    snapshot_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupRecord {
    id: String,
    name: String,
    state: State,
    members: Vec<Member>,
    /// The point in time (when the members were frozen).
    created: (i64, i32),
}

impl GroupRecord {
    fn volumes(&self) -> BTreeSet<&str> {
        self.members.iter().map(|m| m.volume_id.as_str()).collect()
    }
}

impl LocalPool {
    fn groups_dir(&self) -> PathBuf {
        self.root.join("groups")
    }

    fn group_record(&self, id: &GroupSnapshotId) -> PathBuf {
        self.groups_dir().join(format!("{}.json", id.object()))
    }

    fn read_group(&self, id: &GroupSnapshotId) -> Result<Option<GroupRecord>> {
        self.own(id)?;
        Ok(state::read(&self.group_record(id))?)
    }

    /// Whether the group a member snapshot names is complete. `seen`
    /// caches answers for a listing.
    pub(super) fn member_visible(
        &self,
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
            Ok(id) if id.pool() == &self.name => self
                .read_group(&id)?
                .is_some_and(|r| r.state == State::Complete),
            _ => false,
        };
        seen.insert(g.clone(), visible);
        Ok(visible)
    }

    /// The group a complete record describes, with its members' snapshots.
    fn group_of(&self, r: &GroupRecord) -> Result<GroupSnapshot> {
        let mut members = Vec::with_capacity(r.members.len());
        for m in &r.members {
            let id = SnapshotId::parse_existing("snapshot_id", &m.snapshot_id)?;
            let s = state::read::<Snapshot>(&self.snapshot_record(&id))?.ok_or_else(|| {
                Error::internal(
                    format!("group snapshot {}", r.id),
                    std::io::Error::other(format!("member snapshot {id} has no record")),
                )
            })?;
            members.push(s);
        }
        Ok(GroupSnapshot {
            id: r.id.clone(),
            name: r.name.clone(),
            members,
            created: r.created,
        })
    }

    pub(super) fn get_group(&self, id: &GroupSnapshotId) -> Result<Option<GroupSnapshot>> {
        match self.read_group(id)? {
            Some(r) if r.state == State::Complete => self.group_of(&r).map(Some),
            _ => Ok(None),
        }
    }

    pub(super) fn create_group(&self, spec: &GroupSpec) -> Result<GroupSnapshot> {
        if let Some(r) = self.read_group(&spec.id)? {
            if r.state == State::Complete {
                let wanted: BTreeSet<String> =
                    spec.members.iter().map(|(v, _)| v.to_string()).collect();
                let has = r.volumes();
                if has.len() != wanted.len() || has.iter().any(|v| !wanted.contains(*v)) {
                    return Err(Error::AlreadyExists(format!(
                        "group snapshot {} already exists for volumes [{}]",
                        spec.id,
                        has.into_iter().collect::<Vec<_>>().join(", ")
                    )));
                }
                return self.group_of(&r);
            }
            // A create cut short: its copies are from another point in time.
            tracing::info!(group = %spec.id, "removing what an interrupted group snapshot left");
        }
        self.discard_group(&spec.id)?;

        // Every member mounted here is frozen first: the freeze flushes
        // dirty pages into the images, and the measurement below (and so
        // the reservation) must see them.
        let frozen = self.freeze_members(spec)?;
        let mut sources: Vec<(Volume, PathBuf)> = Vec::with_capacity(spec.members.len());
        let mut cost = 0u64;
        for (vol, _) in &spec.members {
            let v = self.read_volume(vol)?.ok_or_else(|| {
                Error::NotFound(format!("source_volume_ids: volume {vol} does not exist"))
            })?;
            let image = self.volume_image(vol);
            let used = space::image_use(&image, self.shared_aware)
                .map_err(|e| io_err("measuring", &image, e))?;
            // What an ordinary snapshot of it costs (see `space`).
            cost = cost.saturating_add(match self.copy {
                CopyMethod::Reflink => used.owned,
                CopyMethod::Sparse => used.allocated,
            });
            sources.push((v, image));
        }
        let _reservation = self.reserve(
            cost,
            0,
            None,
            &format!(
                "group snapshot {} of {} volumes",
                spec.id,
                spec.members.len()
            ),
        )?;

        make_dir_durable(&self.groups_dir())?;
        let mut record = GroupRecord {
            id: spec.id.to_string(),
            name: spec.name.clone(),
            state: State::Creating,
            members: spec
                .members
                .iter()
                .map(|(v, s)| Member {
                    volume_id: v.to_string(),
                    snapshot_id: s.to_string(),
                })
                .collect(),
            created: crate::volume::now_unix(),
        };
        state::write(&self.group_record(&spec.id), &record)?;
        let members = match self.copy_members(spec, &sources, record.created) {
            Ok(m) => m,
            Err(e) => {
                drop(frozen);
                return Err(self.undo_create(&spec.id, e));
            }
        };
        drop(frozen);
        record.state = State::Complete;
        if let Err(e) = state::write(&self.group_record(&spec.id), &record) {
            return Err(self.undo_create(&spec.id, e.into()));
        }
        tracing::info!(group = %spec.id, members = members.len(), copy = self.copy.as_str(),
            "group snapshot complete");
        Ok(GroupSnapshot {
            id: record.id,
            name: record.name,
            members,
            created: record.created,
        })
    }

    /// All or none: removes what a failed create made, and reports the
    /// original error (with the cleanup's, if that failed too).
    fn undo_create(&self, id: &GroupSnapshotId, e: Error) -> Error {
        match self.discard_group(id) {
            Ok(()) => e,
            Err(c) => e.context(format!(
                "(removing the partial group snapshot failed too, a retry or DeleteVolumeGroupSnapshot cleans up: {c})"
            )),
        }
    }

    /// Freezes every member mounted here (in ID order; thawed when the
    /// guards drop); see the module doc.
    fn freeze_members(&self, spec: &GroupSpec) -> Result<Vec<crate::node::FreezeGuard>> {
        let mut frozen = Vec::new();
        for (vol, _) in &spec.members {
            let image = self.volume_image(vol);
            let Some(dev) = self.live_loop(&image)? else {
                continue;
            };
            match crate::node::freeze_if_mounted(&self.host, &dev.path())? {
                Some(guard) => frozen.push(guard),
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "volume {vol} is attached on this node as {} without a mounted \
                         filesystem to freeze, so its writes cannot be paused for a \
                         write-order-consistent group snapshot; unstage it first",
                        dev.path().display()
                    )));
                }
            }
        }
        Ok(frozen)
    }

    /// Copies every (already frozen) member.
    fn copy_members(
        &self,
        spec: &GroupSpec,
        sources: &[(Volume, PathBuf)],
        created: (i64, i32),
    ) -> Result<Vec<Snapshot>> {
        let mut out = Vec::with_capacity(sources.len());
        for (i, ((vol, snap), (v, image))) in spec.members.iter().zip(sources).enumerate() {
            let dst = self.snapshot_image(snap);
            self.copy_frozen(image, &dst)?;
            let s = Snapshot {
                id: snap.to_string(),
                name: spec.name.clone(),
                source_volume_id: vol.to_string(),
                size: v.capacity,
                created,
                ready: true,
                group_snapshot_id: Some(spec.id.to_string()),
            };
            self.commit_record(&self.snapshot_record(snap), &dst, &s)?;
            failpoint::hit(&format!("group-member-{i}"))?;
            out.push(s);
        }
        Ok(out)
    }

    /// Copies `src` (already frozen, if mounted) to `dst` under a temp
    /// name; on an error nothing is left.
    fn copy_frozen(&self, src: &Path, dst: &Path) -> Result<()> {
        let tmp = dst.with_extension("img.tmp");
        let what = || format!("copying ({}) {} to", self.copy.as_str(), src.display());
        copy::copy_file(src, &tmp, self.copy).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(&what(), &tmp, e)
        })?;
        fs::rename(&tmp, dst).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("renaming image into place", dst, e)
        })
    }

    pub(super) fn delete_group(&self, id: &GroupSnapshotId) -> Result<()> {
        self.own(id)?;
        // The record first: the group and its members vanish at once.
        remove_files(&[self.group_record(id)])?;
        if self.groups_dir().is_dir() {
            state::sync_dir(&self.groups_dir())?;
        }
        failpoint::hit("group-delete-between")?;
        self.discard_group(id)
    }

    /// Removes every snapshot the group's journal lists or whose record
    /// names the group, then the journal. Idempotent.
    fn discard_group(&self, id: &GroupSnapshotId) -> Result<()> {
        let mut doomed: BTreeSet<String> = BTreeSet::new();
        if let Some(r) = self.read_group(id)? {
            doomed.extend(r.members.into_iter().map(|m| m.snapshot_id));
        }
        let group = id.to_string();
        for s in self.list_records::<Snapshot>("snapshots")? {
            if s.group_snapshot_id.as_deref() == Some(group.as_str()) {
                doomed.insert(s.id);
            }
        }
        for raw in &doomed {
            let s = SnapshotId::parse_existing("snapshot_id", raw)?;
            self.own(&s)?;
            let image = self.snapshot_image(&s);
            remove_files(&[
                self.snapshot_record(&s),
                image.with_extension("img.tmp"),
                image,
            ])?;
        }
        if !doomed.is_empty() {
            state::sync_dir(&self.root.join("snapshots"))?;
        }
        remove_files(&[self.group_record(id)])?;
        if self.groups_dir().is_dir() {
            state::sync_dir(&self.groups_dir())?;
        }
        Ok(())
    }
}
