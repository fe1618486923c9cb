//! The embedded default pool: image files in a directory on this node,
//! attached as loop devices with direct I/O.
//!
//! Layout under the pool's directory (IDs are validated, so every name is a
//! single safe path component):
//!
//! ```text
//! volumes/<object>.img               the volume's bytes (sparse)
//! volumes/<object>.json              its record: name, size, context
//! publications/<object>/<node>.json  one file per ControllerPublish
//! snapshots/<object>.img             a point-in-time copy (reflink or sparse copy)
//! snapshots/<object>.json
//! groups/<object>.json               a group snapshot's record ([`group`])
//! ```
//!
//! Crash safety: the image is built under a temp name and renamed into
//! place, then the record is written (atomically): the record is what makes
//! a volume exist. A retry after `kill -9` at any point rebuilds what is
//! missing. A delete removes the record first, then the image, so no reader
//! ever sees a volume without its bytes.
//!
//! A full pool can always be emptied through the CO: a publication is a file
//! of its own, so ControllerUnpublish is an unlink (never a rewrite that
//! needs space), and delete, unstage and start-up write nothing. (Records
//! from before this layout kept publications inside the volume record; they
//! are still read, and cleared by rewriting the record.)
//!
//! Space: the pool never promises more than it has unless the operator
//! opted into overcommit; see [`space`] for the accounting. New promises are
//! reserved under a short pool mutex (held for a comparison, never across a
//! measurement or a copy), so two concurrent creates cannot both take the
//! same headroom: a measurement counts only if no reservation was taken or
//! given back while it ran.
//!
//! Attachments are found from the kernel (`/sys/block/loop*/loop/backing_file`),
//! never from a record, so a restarted node plugin re-adopts its loop devices.
//!
//! QoS: a volume's limits (the `qos*` mutable parameters) are in its record
//! and become block-layer throttle rules on its loop device when it is
//! attached, which are removed again before it is detached; see [`qos`].

mod group;
mod qos;
mod space;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use haina_sys::host::SharedHost;
use haina_sys::loopdev::{AttachOptions, LoopDevice};

use super::copy::{self, CopyMethod};
use super::{Attachment, Backend, CreateSpec, GroupSpec};
use crate::error::{Error, Result};
use crate::ids::{GroupSnapshotId, PoolName, SnapshotId, VolumeId, echo};
use crate::volume::{
    Capability, Capacity, ContentSource, GroupSnapshot, MIB, Publication, Secrets, Segments,
    Snapshot, TOPOLOGY_NODE_KEY, Volume,
};
use crate::{failpoint, state};

pub struct LocalPool {
    name: PoolName,
    root: PathBuf,
    node_id: String,
    direct_io: bool,
    copy: CopyMethod,
    /// The kernel (loop devices go through it, with deadlines).
    host: SharedHost,
    /// Count reflink-shared extents as not owned (FIEMAP). True on reflink
    /// pools, and whenever the copy method could not be probed.
    shared_aware: bool,
    /// `overcommit` from the config: 1.0 (none) unless the operator opted in.
    overcommit: f64,
    /// Space promised to creates, snapshots and expansions in flight.
    ledger: Mutex<Ledger>,
    /// Where the QoS rules of loop devices go, or why this node has none.
    throttle: std::result::Result<haina_sys::throttle::Throttle, String>,
}

/// The pool's promises in flight.
#[derive(Debug, Default)]
struct Ledger {
    /// Bytes promised to operations in flight.
    bytes: u64,
    /// Bumped by every reservation taken or given back: a measurement taken
    /// while it stayed the same saw every finished operation's image.
    generation: u64,
}

/// Space promised to an operation in flight; given back on drop (once the
/// operation's image exists and measurements see it).
struct Reservation<'a> {
    ledger: &'a Mutex<Ledger>,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        l.bytes = l.bytes.saturating_sub(self.bytes);
        l.generation += 1;
    }
}

/// Measurements retried before one is taken under the mutex (so a busy pool
/// cannot starve a reservation).
const MEASURE_ATTEMPTS: u32 = 3;

/// One ControllerPublishVolume, as its own file.
#[derive(serde::Serialize, serde::Deserialize)]
struct PublicationRecord {
    node: String,
    publication: Publication,
}

/// The file name for a node's publication: the node ID when it is a safe
/// name, else a hash (node IDs may hold `/`); the ID itself is inside.
fn node_file(node: &str) -> String {
    let safe = node.len() <= 100
        && !node.is_empty()
        && !node.starts_with('.')
        && !node.starts_with("h-")
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let stem = if safe {
        node.to_string()
    } else {
        crate::ids::hashed_name(node)
    };
    format!("{stem}.json")
}

/// Creates `dir` (and missing parents) so that it survives a crash: each new
/// directory's parent is fsync'ed.
fn make_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io_err("creating", dir, io::Error::other("no parent")))?;
    make_dir_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating directory", dir, e)),
    }
    Ok(state::sync_dir(parent)?)
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error() || c == rustix::io::Errno::DQUOT.raw_os_error()
    )
}

/// Removes files in order (missing ones are fine); the caller fsyncs the
/// directory once at the end. The order is what protects readers from a
/// crash in between: records go before the images they describe.
fn remove_files(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", p, e)),
        }
    }
    Ok(())
}

/// A failed loop attach: running out of loop devices is RESOURCE_EXHAUSTED
/// (the CO retries, or schedules elsewhere); anything else is INTERNAL.
/// A failed loop attach; running out of loop devices is RESOURCE_EXHAUSTED
/// (mapped in error.rs, for every pool).
fn attach_error(image: &Path, e: haina_sys::host::HostError) -> Error {
    Error::from(e).context(format!("attaching {} to a loop device", image.display()))
}

/// An I/O error naming what was done to which path. A full pool filesystem
/// is RESOURCE_EXHAUSTED, a size the filesystem cannot hold OUT_OF_RANGE.
fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    if is_no_space(&e) {
        return Error::ResourceExhausted(format!(
            "{what} {}: the pool filesystem is full ({e})",
            path.display()
        ));
    }
    if e.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error()) {
        return Error::OutOfRange(format!(
            "{what} {}: larger than the pool filesystem allows ({e})",
            path.display()
        ));
    }
    Error::internal(format!("{what} {}", path.display()), e)
}

impl LocalPool {
    /// Opens (creating if needed) the pool at `root`, and probes its copy method.
    pub fn open(
        name: PoolName,
        root: PathBuf,
        node_id: String,
        direct_io: bool,
        host: SharedHost,
    ) -> Result<Self> {
        for sub in ["volumes", "snapshots"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| io_err("creating pool directory", &d, e))?;
        }
        // Canonical, because the kernel shows loop backing files that way,
        // and ownership checks compare the two as strings.
        let root = fs::canonicalize(&root).map_err(|e| io_err("resolving", &root, e))?;
        let (copy, shared_aware) = match CopyMethod::probe(&root) {
            Ok(m) => (m, m == CopyMethod::Reflink),
            // The probe makes two empty files; on a full filesystem even that
            // can fail. Start anyway, so the CO can free space through us:
            // take the method the existing volumes record (else the sparse
            // copy, which works everywhere), and account shared extents in
            // case the filesystem does reflink.
            Err(e) if is_no_space(&e) => {
                let m = Self::recorded_copy_method(&root).unwrap_or(CopyMethod::Sparse);
                tracing::warn!(pool = %name, root = %root.display(), copy = m.as_str(), error = %e,
                    "cannot probe reflink support: the pool filesystem is full; using the copy method of the existing volumes (sparse if none) until restart");
                (m, true)
            }
            Err(e) => return Err(io_err("probing reflink support in", &root, e)),
        };
        tracing::info!(pool = %name, root = %root.display(), copy = copy.as_str(), direct_io, "local pool ready");
        Ok(Self {
            name,
            root,
            node_id,
            direct_io,
            copy,
            host,
            shared_aware,
            overcommit: 1.0,
            ledger: Mutex::new(Ledger::default()),
            throttle: Err("QoS is not configured for this pool".into()),
        })
    }

    /// Lets the pool promise up to `ratio` times its free space (the
    /// config's `overcommit`); `None` promises no more than it has.
    pub fn with_overcommit(mut self, ratio: Option<f64>) -> Self {
        self.overcommit = ratio.unwrap_or(1.0).max(1.0);
        if self.overcommit > 1.0 {
            tracing::warn!(pool = %self.name, overcommit = self.overcommit,
                "overcommit is on: a volume can lose writes when others fill the pool");
        }
        self
    }

    /// The copy method recorded in the newest volume's context, if any.
    fn recorded_copy_method(root: &Path) -> Option<CopyMethod> {
        let dir = root.join("volumes");
        let mut newest: Option<Volume> = None;
        for object in state::list(&dir).ok()? {
            if let Ok(Some(v)) = state::read::<Volume>(&dir.join(format!("{object}.json")))
                && newest.as_ref().is_none_or(|n| v.created >= n.created)
            {
                newest = Some(v);
            }
        }
        match newest?.context.get("copyMethod")?.as_str() {
            "reflink" => Some(CopyMethod::Reflink),
            "sparse" => Some(CopyMethod::Sparse),
            _ => None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn copy_method(&self) -> CopyMethod {
        self.copy
    }

    /// Loop devices over the image at `image`, live ones first (string
    /// comparison of sysfs paths: nothing is stat'ed).
    fn loops_of(&self, image: &Path) -> Result<Vec<(LoopDevice, bool)>> {
        let mut found: Vec<(LoopDevice, bool)> = self
            .host
            .loops()?
            .into_iter()
            .filter(|(_, backing, _)| backing == image)
            .map(|(dev, _, deleted)| (dev, deleted))
            .collect();
        found.sort_by_key(|(dev, deleted)| (*deleted, dev.index));
        Ok(found)
    }

    /// The live loop device serving `image`, if any.
    fn live_loop(&self, image: &Path) -> Result<Option<LoopDevice>> {
        Ok(self
            .loops_of(image)?
            .into_iter()
            .find(|(_, deleted)| !deleted)
            .map(|(dev, _)| dev))
    }

    fn own(&self, id: &VolumeId) -> Result<()> {
        if id.pool() != &self.name {
            return Err(Error::internal(
                format!("ID {id} routed to pool {}", self.name),
                io::Error::other("pool mismatch"),
            ));
        }
        Ok(())
    }

    pub fn volume_image(&self, id: &VolumeId) -> PathBuf {
        self.root
            .join("volumes")
            .join(format!("{}.img", id.object()))
    }
    fn volume_record(&self, id: &VolumeId) -> PathBuf {
        self.root
            .join("volumes")
            .join(format!("{}.json", id.object()))
    }
    fn snapshot_image(&self, id: &SnapshotId) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{}.img", id.object()))
    }
    fn snapshot_record(&self, id: &SnapshotId) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{}.json", id.object()))
    }

    /// Every record in `sub` (`volumes` or `snapshots`), sorted by ID.
    fn list_records<T: serde::de::DeserializeOwned>(&self, sub: &str) -> Result<Vec<T>> {
        let dir = self.root.join(sub);
        let mut out = Vec::new();
        for object in state::list(&dir)? {
            out.extend(state::read(&dir.join(format!("{object}.json")))?);
        }
        Ok(out)
    }

    fn publications_dir(&self, id: &VolumeId) -> PathBuf {
        self.root.join("publications").join(id.object())
    }

    /// The volume's publications: one file each (plus any a record from
    /// before that layout still holds).
    fn with_publications(&self, mut v: Volume, id: &VolumeId) -> Result<Volume> {
        let dir = self.publications_dir(id);
        for stem in state::list(&dir)? {
            if let Some(r) = state::read::<PublicationRecord>(&dir.join(format!("{stem}.json")))? {
                v.publications.insert(r.node, r.publication);
            }
        }
        Ok(v)
    }

    fn read_volume(&self, id: &VolumeId) -> Result<Option<Volume>> {
        self.own(id)?;
        match state::read::<Volume>(&self.volume_record(id))? {
            Some(v) => self.with_publications(v, id).map(Some),
            None => Ok(None),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's space now: free space and the demand of every volume
    /// image except `exclude` (the image a retried create rebuilds).
    fn measure(&self, reserved: u64, exclude: Option<&Path>) -> Result<space::PoolSpace> {
        let st =
            rustix::fs::statvfs(&self.root).map_err(|e| io_err("statvfs", &self.root, e.into()))?;
        let dir = self.root.join("volumes");
        let mut demand = 0u64;
        for entry in fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))? {
            let path = entry.map_err(|e| io_err("listing", &dir, e))?.path();
            if path.extension().is_none_or(|x| x != "img") || Some(path.as_path()) == exclude {
                continue;
            }
            match space::image_use(&path, self.shared_aware) {
                Ok(u) => demand = demand.saturating_add(u.demand()),
                // Deleted since the listing: it demands nothing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("measuring", &path, e)),
            }
        }
        Ok(space::PoolSpace {
            free: st.f_bavail.saturating_mul(st.f_frsize),
            total: st.f_blocks.saturating_mul(st.f_frsize),
            demand,
            reserved,
        })
    }

    /// Measures the pool and holds the ledger consistent with it: the
    /// measurement runs without the mutex, and counts only if no reservation
    /// was taken or given back meanwhile (else it is repeated, and after a
    /// few tries taken under the mutex).
    fn measure_locked(
        &self,
        exclude: Option<&Path>,
    ) -> Result<(space::PoolSpace, MutexGuard<'_, Ledger>)> {
        for _ in 0..MEASURE_ATTEMPTS {
            let before = self.ledger().generation;
            let space = self.measure(0, exclude)?;
            let ledger = self.ledger();
            if ledger.generation == before {
                let reserved = ledger.bytes;
                return Ok((space::PoolSpace { reserved, ..space }, ledger));
            }
        }
        let ledger = self.ledger();
        let space = self.measure(ledger.bytes, exclude)?;
        Ok((space, ledger))
    }

    /// Promises `cost` bytes to an operation on an object of `size` bytes,
    /// or says why not (`what` names the operation in the error).
    fn reserve(
        &self,
        cost: u64,
        size: u64,
        exclude: Option<&Path>,
        what: &str,
    ) -> Result<Reservation<'_>> {
        let (space, mut ledger) = self.measure_locked(exclude)?;
        let with = if self.overcommit > 1.0 {
            format!(" with overcommit {}", self.overcommit)
        } else {
            String::new()
        };
        match space::admit(&space, self.overcommit, cost, size) {
            space::Verdict::Fits => {
                ledger.bytes += cost;
                ledger.generation += 1;
                Ok(Reservation {
                    ledger: &self.ledger,
                    bytes: cost,
                })
            }
            space::Verdict::Never { ever } => Err(Error::OutOfRange(format!(
                "{what}: {size} bytes is more than local pool {} can ever hold ({ever} bytes{with})",
                self.name
            ))),
            space::Verdict::NotNow { available } => Err(Error::ResourceExhausted(format!(
                "{what} needs {cost} bytes, but local pool {} has {available} for new volumes{with} \
                 (free {}, margin {}, still promised to existing volumes {}, in flight {}); \
                 volumes never overcommit the pool unless its config sets `overcommit`",
                self.name,
                space.free,
                space::margin(space.total),
                space.demand,
                space.reserved
            ))),
        }
    }

    /// Builds `dst` from `src` (or empty) under a temp name, sized `len`,
    /// then renames it in. On an error nothing is left behind.
    fn build_image(&self, dst: &Path, src: Option<&Path>, len: u64) -> Result<()> {
        let tmp = dst.with_extension("img.tmp");
        self.build_tmp(&tmp, src, len).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        fs::rename(&tmp, dst).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("renaming image into place", dst, e)
        })?;
        // The record written next, in the same directory, fsyncs it.
        Ok(())
    }

    /// Freezes `src`'s filesystem if it is mounted on this node, so that a
    /// copy taken now is filesystem-consistent. Taken before the copy's
    /// cost is measured: the freeze flushes dirty pages into the image,
    /// and they must be in the measurement (and the reservation).
    fn freeze_source(&self, src: &Path) -> Result<Option<crate::node::FreezeGuard>> {
        match self.live_loop(src)? {
            Some(dev) => crate::node::freeze_if_mounted(&self.host, &dev.path()),
            None => Ok(None),
        }
    }

    /// Builds the image under its temp name; a source must already be
    /// frozen by the caller (see [`Self::freeze_source`]).
    fn build_tmp(&self, tmp: &Path, src: Option<&Path>, len: u64) -> Result<()> {
        if let Some(src) = src {
            copy::copy_file(src, tmp, self.copy).map_err(|e| {
                io_err(
                    &format!("copying ({}) {} to", self.copy.as_str(), src.display()),
                    tmp,
                    e,
                )
            })?;
            failpoint::hit("copy-image")?;
        }
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(src.is_none())
            .open(tmp)
            .map_err(|e| io_err("creating image", tmp, e))?;
        if f.metadata().map_err(|e| io_err("stat", tmp, e))?.len() < len {
            f.set_len(len).map_err(|e| io_err("sizing image", tmp, e))?;
        }
        f.sync_all().map_err(|e| io_err("fsync", tmp, e))?;
        failpoint::hit("create-image")
    }

    /// Writes a record for an image just built; if that fails, removes the
    /// image too, so a failed call leaves nothing behind.
    fn commit_record<T: serde::Serialize>(
        &self,
        record: &Path,
        image: &Path,
        value: &T,
    ) -> Result<()> {
        state::write(record, value).map_err(|e| {
            let _ = fs::remove_file(image);
            if let Some(dir) = image.parent() {
                let _ = state::sync_dir(dir);
            }
            Error::from(e)
        })
    }

    /// What a new volume from `source` costs beyond its capacity: on a
    /// reflink pool, a clone makes its source's owned blocks shared, so the
    /// source may need them again. A restore shares with a snapshot, which
    /// never writes, and a sparse copy costs only the new volume's capacity.
    fn source_cost(&self, source: Option<&ContentSource>, src_image: Option<&Path>) -> Result<u64> {
        match (source, src_image) {
            (Some(ContentSource::Volume(_)), Some(src)) if self.copy == CopyMethod::Reflink => {
                let u = space::image_use(src, true).map_err(|e| io_err("measuring", src, e))?;
                Ok(u.owned)
            }
            _ => Ok(0),
        }
    }

    fn source_image(&self, source: &ContentSource) -> Result<PathBuf> {
        let (field, raw, snapshot) = match source {
            ContentSource::Snapshot(s) => ("volume_content_source.snapshot.snapshot_id", s, true),
            ContentSource::Volume(v) => ("volume_content_source.volume.volume_id", v, false),
        };
        let id = VolumeId::parse_existing(field, raw)?;
        if id.pool() != &self.name {
            return Err(Error::InvalidArgument(format!(
                "{field} {} is in pool {}, but the new volume is in pool {}; copy across pools is not supported",
                echo(raw),
                id.pool(),
                self.name
            )));
        }
        let (path, ready) = if snapshot {
            (
                self.snapshot_image(&id),
                self.get_snapshot(&id, &Secrets::default())?.is_some(),
            )
        } else {
            (
                self.volume_image(&id),
                self.get_volume(&id, &Secrets::default())?.is_some(),
            )
        };
        if !ready {
            return Err(Error::NotFound(format!(
                "{field} {} does not exist",
                echo(raw)
            )));
        }
        Ok(path)
    }
}

impl Backend for LocalPool {
    fn name(&self) -> &PoolName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn topology(&self) -> Option<Segments> {
        Some([(TOPOLOGY_NODE_KEY.to_string(), self.node_id.clone())].into())
    }

    fn check_capability(&self, cap: &Capability) -> Result<()> {
        if cap.mode.is_multi_node() {
            return Err(Error::InvalidArgument(format!(
                "access mode {} is not supported by local pool {:?}: its volumes live on one node; use a Ceph RBD pool for multi-node access",
                cap.mode.name(),
                self.name.as_str()
            )));
        }
        Ok(())
    }

    fn health(&self) -> Result<()> {
        let probe = self.root.join("volumes");
        rustix::fs::access(&probe, rustix::fs::Access::WRITE_OK)
            .map_err(|e| io_err("pool directory is not writable:", &probe, e.into()))
    }

    fn context(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("copyMethod".to_string(), self.copy.as_str().to_string())])
    }

    fn qos_support(&self) -> crate::qos::Support {
        self.support()
    }

    fn set_qos(&self, id: &VolumeId, limits: crate::qos::Limits, _secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        self.store_qos(id, limits)
    }

    fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("path".into(), self.root.display().to_string()),
            ("copyMethod".into(), self.copy.as_str().into()),
            ("directIO".into(), self.direct_io.to_string()),
            (
                "qos".into(),
                match &self.throttle {
                    Ok(t) => t.to_string(),
                    Err(why) => format!("not enforced: {why}"),
                },
            ),
        ]
    }

    fn create_volume(&self, spec: &CreateSpec, _secrets: &Secrets) -> Result<Volume> {
        self.own(&spec.id)?;
        if let Some(v) = self.read_volume(&spec.id)? {
            return Ok(v);
        }
        // The image is built under a temp name and renamed into place; the
        // record, written last, is what makes the volume exist. A crash
        // before it leaves at most an image that the retried create rebuilds.
        let src = spec
            .source
            .as_ref()
            .map(|s| self.source_image(s))
            .transpose()?;
        let image = self.volume_image(&spec.id);
        let _frozen = match &src {
            Some(s) => self.freeze_source(s)?,
            None => None,
        };
        let cost = spec
            .capacity
            .saturating_add(self.source_cost(spec.source.as_ref(), src.as_deref())?);
        let _reservation = self.reserve(
            cost,
            spec.capacity,
            Some(&image),
            &format!("capacity_range: a {}-byte volume", spec.capacity),
        )?;
        self.build_image(&image, src.as_deref(), spec.capacity)?;
        let volume = Volume {
            id: spec.id.to_string(),
            name: spec.name.clone(),
            capacity: spec.capacity,
            context: spec.context.clone(),
            source: spec.source.clone(),
            publications: BTreeMap::new(),
            created: crate::volume::now_unix().0 as u64,
            qos: spec.qos,
        };
        self.commit_record(&self.volume_record(&spec.id), &image, &volume)?;
        Ok(volume)
    }

    fn delete_volume(&self, id: &VolumeId, _secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let image = self.volume_image(id);
        // Any device over the image, even one whose file was deleted behind
        // haina's back: deleting the record would orphan its mount.
        if let Some((dev, deleted)) = self.loops_of(&image)?.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still attached on this node as {}{}; unstage it first",
                dev.path().display(),
                if *deleted {
                    " (its image file was deleted behind haina's back)"
                } else {
                    ""
                }
            )));
        }
        if let Some(r) = self.read_volume(id)?
            && !r.publications.is_empty()
        {
            let nodes: Vec<_> = r.publications.keys().cloned().collect();
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still published to node(s) {}; unpublish it first",
                nodes.join(", ")
            )));
        }
        // The record goes first: from then on the volume does not exist for
        // any reader, and a crash leaves at worst an image file that the
        // CO's retried DeleteVolume (or a re-create by name) replaces.
        let record = self.volume_record(id);
        remove_files(&[record])?;
        failpoint::hit("delete-between")?;
        remove_files(&[image.with_extension("img.tmp"), image])?;
        state::sync_dir(&self.root.join("volumes"))?;
        // Nothing is published (checked above); this drops the empty
        // directory and any temp file a crashed publish left in it.
        let pubs = self.publications_dir(id);
        match fs::remove_dir_all(&pubs) {
            Ok(()) => state::sync_dir(&self.root.join("publications"))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &pubs, e)),
        }
        Ok(())
    }

    fn get_volume(&self, id: &VolumeId, _secrets: &Secrets) -> Result<Option<Volume>> {
        self.read_volume(id)
    }

    fn list_volumes(&self, _secrets: &Secrets) -> Result<Vec<Volume>> {
        let mut out = Vec::new();
        for v in self.list_records::<Volume>("volumes")? {
            let id = VolumeId::parse_existing("volume", &v.id)?;
            out.push(self.with_publications(v, &id)?);
        }
        Ok(out)
    }

    /// What a CreateVolume would accept right now, in whole MiB (sizes are
    /// whole MiB), so GetCapacity never promises what create then refuses.
    fn capacity(&self, _secrets: &Secrets) -> Result<Capacity> {
        let (space, ledger) = self.measure_locked(None)?;
        drop(ledger);
        let floor = |b: u64| b / MIB * MIB;
        let available = floor(space.available(self.overcommit));
        Ok(Capacity {
            available,
            maximum_volume_size: Some(available.min(floor(space.ever(self.overcommit)))),
        })
    }

    /// A publication is a file of its own: publish writes it (crash-safe),
    /// unpublish unlinks it, so unpublish needs no free space.
    fn set_publication(
        &self,
        id: &VolumeId,
        node: &str,
        publication: Option<Publication>,
        _secrets: &Secrets,
    ) -> Result<Volume> {
        if self.read_volume(id)?.is_none() {
            return Err(Error::NotFound(format!("volume {id} does not exist")));
        }
        let dir = self.publications_dir(id);
        let file = dir.join(node_file(node));
        match publication {
            Some(publication) => {
                make_dir_durable(&dir)?;
                let r = PublicationRecord {
                    node: node.to_string(),
                    publication,
                };
                state::write(&file, &r)?;
            }
            None => {
                state::remove(&file)?;
                // A record from before publications had files of their own.
                if let Some(mut legacy) = state::read::<Volume>(&self.volume_record(id))?
                    && legacy.publications.remove(node).is_some()
                {
                    state::write(&self.volume_record(id), &legacy)?;
                }
            }
        }
        self.read_volume(id)?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))
    }

    fn expand_volume(&self, id: &VolumeId, size: u64, _secrets: &Secrets) -> Result<u64> {
        let mut r = self
            .read_volume(id)?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        let image = self.volume_image(id);
        let f = OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(|e| io_err("opening", &image, e))?;
        let len = f.metadata().map_err(|e| io_err("stat", &image, e))?.len();
        if len < size {
            let _reservation = self.reserve(
                size - len,
                size,
                None,
                &format!("capacity_range: growing volume {id} to {size} bytes"),
            )?;
            f.set_len(size).map_err(|e| io_err("growing", &image, e))?;
            f.sync_all().map_err(|e| io_err("fsync", &image, e))?;
        }
        if r.capacity < size {
            r.capacity = size;
            state::write(&self.volume_record(id), &r)?;
        }
        // An attached device on this node sees the new size at once.
        if let Some(dev) = self.live_loop(&image)? {
            self.host.loop_refresh(&dev)?;
        }
        Ok(r.capacity.max(size))
    }

    fn create_snapshot(
        &self,
        id: &SnapshotId,
        name: &str,
        source: &VolumeId,
        _secrets: &Secrets,
    ) -> Result<Snapshot> {
        self.own(id)?;
        if let Some(s) = self.get_snapshot(id, &Secrets::default())? {
            if s.source_volume_id != source.to_string() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {} already exists for source volume {}",
                    echo(name),
                    s.source_volume_id
                )));
            }
            return Ok(s);
        }
        let vol = self
            .get_volume(source, &Secrets::default())?
            .ok_or_else(|| Error::NotFound(format!("source_volume_id {source} does not exist")))?;
        let src = self.volume_image(source);
        let _frozen = self.freeze_source(&src)?;
        let used =
            space::image_use(&src, self.shared_aware).map_err(|e| io_err("measuring", &src, e))?;
        // A reflink makes the source's owned blocks shared (the source may
        // need them again); a sparse copy allocates what the source has.
        let cost = match self.copy {
            CopyMethod::Reflink => used.owned,
            CopyMethod::Sparse => used.allocated,
        };
        let _reservation = self.reserve(cost, 0, None, &format!("snapshot of volume {source}"))?;
        let image = self.snapshot_image(id);
        self.build_image(&image, Some(&src), 0)?;
        let snap = Snapshot {
            id: id.to_string(),
            name: name.to_string(),
            source_volume_id: source.to_string(),
            size: vol.capacity,
            created: crate::volume::now_unix(),
            ready: true,
            group_snapshot_id: None,
        };
        self.commit_record(&self.snapshot_record(id), &image, &snap)?;
        Ok(snap)
    }

    fn delete_snapshot(&self, id: &SnapshotId, _secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let image = self.snapshot_image(id);
        remove_files(&[
            self.snapshot_record(id),
            image.with_extension("img.tmp"),
            image,
        ])?;
        state::sync_dir(&self.root.join("snapshots"))?;
        Ok(())
    }

    fn get_snapshot(&self, id: &SnapshotId, _secrets: &Secrets) -> Result<Option<Snapshot>> {
        self.own(id)?;
        // The record is written only after the image is in place; a group
        // member shows only once its group is complete.
        let s = state::read::<Snapshot>(&self.snapshot_record(id))?;
        match s {
            Some(s) if self.member_visible(&s, &mut Default::default())? => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    fn list_snapshots(&self, _secrets: &Secrets) -> Result<Vec<Snapshot>> {
        let mut groups = std::collections::HashMap::new();
        let mut out = Vec::new();
        for s in self.list_records::<Snapshot>("snapshots")? {
            if self.member_visible(&s, &mut groups)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn create_group_snapshot(&self, spec: &GroupSpec, _secrets: &Secrets) -> Result<GroupSnapshot> {
        self.create_group(spec)
    }

    fn delete_group_snapshot(&self, id: &GroupSnapshotId, _secrets: &Secrets) -> Result<()> {
        self.delete_group(id)
    }

    fn get_group_snapshot(
        &self,
        id: &GroupSnapshotId,
        _secrets: &Secrets,
    ) -> Result<Option<GroupSnapshot>> {
        self.get_group(id)
    }

    /// Attaches (or finds) the loop device and gives it the volume's QoS
    /// limits before anyone can use it; a device this call attached is
    /// detached again if that fails.
    fn attach(&self, id: &VolumeId, _secrets: &Secrets) -> Result<Attachment> {
        self.own(id)?;
        let image = self.volume_image(id);
        let vol = match self.get_volume(id, &Secrets::default())? {
            Some(v) if image.exists() => v,
            _ => {
                return Err(Error::NotFound(format!(
                    "volume {id} does not exist in pool {}",
                    self.name
                )));
            }
        };
        if let (false, crate::qos::Support::No(why)) = (vol.qos.is_unlimited(), self.support()) {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} has QoS limits ({}) but {why}; it is not attached without them",
                vol.qos
            )));
        }
        let opts = AttachOptions {
            direct_io: self.direct_io,
            read_only: false,
        };
        let (dev, newly_attached) = self
            .host
            .loop_attach(&image, &opts)
            .map_err(|e| attach_error(&image, e))?;
        if let Err(e) = self.apply_qos(id, &dev, vol.qos) {
            if newly_attached && let Err(undo) = self.detach(id) {
                return Err(e.context(format!(
                    "(and detaching {} failed: {undo})",
                    dev.path().display()
                )));
            }
            return Err(e);
        }
        Ok(Attachment {
            device: dev.path(),
            mounter: "loop",
            backing: image.display().to_string(),
            newly_attached,
        })
    }

    fn attachment(&self, id: &VolumeId) -> Result<Option<Attachment>> {
        self.own(id)?;
        let image = self.volume_image(id);
        // A device whose image was deleted behind haina's back still counts:
        // unstage must find it to clean it up.
        Ok(self
            .loops_of(&image)?
            .first()
            .map(|(dev, deleted)| Attachment {
                device: dev.path(),
                mounter: "loop",
                backing: format!(
                    "{}{}",
                    image.display(),
                    if *deleted { " (deleted)" } else { "" }
                ),
                newly_attached: false,
            }))
    }

    fn owns_device(&self, id: &VolumeId, dev: &haina_sys::blockdev::Device) -> bool {
        self.own(id).is_ok() && dev.loop_backing() == Some(self.volume_image(id).as_path())
    }

    fn data_path_health(&self, id: &VolumeId, att: &Attachment) -> Option<String> {
        att.backing.ends_with(" (deleted)").then(|| {
            format!(
                "the image file of volume {id} ({}) was deleted while attached as {}",
                self.volume_image(id).display(),
                att.device.display()
            )
        })
    }

    fn release(&self, id: &VolumeId) -> Result<()> {
        self.own(id)?;
        self.clear_qos(id, &self.volume_image(id))
    }

    /// Removes the devices' QoS rules first: a detached loop device number
    /// is free for the next image, which must not inherit them.
    fn detach(&self, id: &VolumeId) -> Result<()> {
        self.own(id)?;
        let image = self.volume_image(id);
        self.clear_qos(id, &image)?;
        self.host.loop_detach(&image)?;
        Ok(())
    }

    fn is_blank(&self, id: &VolumeId) -> Result<bool> {
        let image = self.volume_image(id);
        let f = fs::File::open(&image).map_err(|e| io_err("opening", &image, e))?;
        // No data extent anywhere: the whole file reads as zeros.
        match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)) {
            Err(rustix::io::Errno::NXIO) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(io_err("SEEK_DATA on", &image, e.into())),
        }
    }

    fn attachments(&self) -> Result<Vec<(VolumeId, Attachment)>> {
        let dir = self.root.join("volumes");
        let mut out = Vec::new();
        for (dev, backing, _deleted) in self.host.loops()? {
            if backing.parent() != Some(dir.as_path()) {
                continue;
            }
            let Some(object) = backing.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if let Ok(id) = VolumeId::parse_existing("volume", &format!("{}.{object}", self.name)) {
                let att = Attachment {
                    device: dev.path(),
                    mounter: "loop",
                    backing: backing.display().to_string(),
                    newly_attached: false,
                };
                out.push((id, att));
            }
        }
        Ok(out)
    }

    fn refresh_size(&self, id: &VolumeId) -> Result<u64> {
        let image = self.volume_image(id);
        let dev = self.live_loop(&image)?.ok_or_else(|| {
            Error::FailedPrecondition(format!("volume {id} is not attached on this node"))
        })?;
        Ok(self.host.loop_refresh(&dev)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::AccessMode;

    fn pool() -> (tempfile::TempDir, LocalPool) {
        let dir = tempfile::tempdir().unwrap();
        let name = PoolName::parse("p").unwrap();
        let host: SharedHost = std::sync::Arc::new(haina_sys::fake::FakeHost::new());
        let pool = LocalPool::open(name, dir.path().join("pool"), "n".into(), true, host).unwrap();
        (dir, pool)
    }

    fn publication() -> Publication {
        Publication {
            readonly: false,
            mode: AccessMode::SingleNodeWriter,
            block: false,
        }
    }

    #[test]
    fn publications_are_files_of_their_own_and_legacy_ones_still_count() {
        let (_dir, pool) = pool();
        let id = VolumeId::parse_existing("volume_id", "p.v1").unwrap();
        let spec = CreateSpec {
            id: id.clone(),
            name: "v1".into(),
            capacity: MIB,
            context: BTreeMap::new(),
            source: None,
            qos: Default::default(),
        };
        pool.create_volume(&spec, &Secrets::default()).unwrap();
        let pubs = pool.root().join("publications/v1");
        // A node ID may hold '/' or '..': its file is a hash, inside the directory.
        for node in ["node-a", "../../etc/evil", "h-looks-hashed"] {
            pool.set_publication(&id, node, Some(publication()), &Secrets::default())
                .unwrap();
        }
        let files: Vec<_> = fs::read_dir(&pubs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files.contains(&"node-a.json".to_string()), "{files:?}");
        assert!(!pool.root().join("etc").exists());
        let v = pool.get_volume(&id, &Secrets::default()).unwrap().unwrap();
        let nodes: Vec<_> = v.publications.keys().cloned().collect();
        assert_eq!(nodes, ["../../etc/evil", "h-looks-hashed", "node-a"]);
        assert_eq!(
            pool.list_volumes(&Secrets::default()).unwrap()[0].publications,
            v.publications
        );

        // A record from before: its publications still count, and
        // unpublishing clears them from the record.
        let mut legacy = state::read::<Volume>(&pool.volume_record(&id))
            .unwrap()
            .unwrap();
        legacy.publications.insert("old".into(), publication());
        state::write(&pool.volume_record(&id), &legacy).unwrap();
        assert_eq!(
            pool.get_volume(&id, &Secrets::default())
                .unwrap()
                .unwrap()
                .publications
                .len(),
            4
        );
        let e = pool.delete_volume(&id, &Secrets::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        for node in ["old", "node-a", "../../etc/evil", "h-looks-hashed", "never"] {
            pool.set_publication(&id, node, None, &Secrets::default())
                .unwrap();
        }
        assert!(
            pool.get_volume(&id, &Secrets::default())
                .unwrap()
                .unwrap()
                .publications
                .is_empty()
        );
        let raw = state::read::<Volume>(&pool.volume_record(&id))
            .unwrap()
            .unwrap();
        assert!(raw.publications.is_empty());
        // A crashed publish's temp file does not keep the directory.
        fs::write(pubs.join(".node-b.json.tmp.1"), b"{").unwrap();
        pool.delete_volume(&id, &Secrets::default()).unwrap();
        assert!(!pubs.exists());
        assert!(pool.get_volume(&id, &Secrets::default()).unwrap().is_none());
    }

    #[test]
    fn a_failed_create_leaves_nothing() {
        let (_dir, pool) = pool();
        let id = VolumeId::parse_existing("volume_id", "p.huge").unwrap();
        let spec = CreateSpec {
            id: id.clone(),
            name: "huge".into(),
            capacity: crate::volume::MAX_CAPACITY,
            context: BTreeMap::new(),
            source: None,
            qos: Default::default(),
        };
        let e = pool.create_volume(&spec, &Secrets::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
        let left: Vec<_> = fs::read_dir(pool.root().join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn out_of_loop_devices_is_resource_exhausted() {
        let img = Path::new("/pool/volumes/v.img");
        let e = attach_error(
            img,
            haina_sys::loopdev::LoopError::NoDeviceLeft {
                path: img.into(),
                errno: rustix::io::Errno::NOSPC,
            }
            .into(),
        );
        assert!(
            matches!(&e, Error::ResourceExhausted(m) if m.contains("LOOP_CTL_GET_FREE") && m.contains("v.img")),
            "{e:?}"
        );
        let e = attach_error(
            img,
            haina_sys::loopdev::LoopError::NoFreeDevice {
                path: img.into(),
                attempts: 16,
            }
            .into(),
        );
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let e = attach_error(
            img,
            haina_sys::loopdev::LoopError::Backing {
                path: img.into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }
            .into(),
        );
        assert_eq!(e.code(), tonic::Code::Internal);
    }
}
