//! Ceph RBD pools: volumes and snapshots are RBD images, created and
//! removed through one kept-open librados connection (no `rbd` processes on
//! the controller path), and attached on nodes through [`crate::attach`].
//!
//! Ceph is the record. Image names derive from the CO's request names and
//! everything else (name, context, source, publications, attachments) is
//! image metadata ([`meta`]), so a controller restarted anywhere sees the
//! same state, and every step is idempotent: a create retried after
//! `kill -9` finds the image it made and completes it (the `haina.id` key
//! is written last), a delete retried finds less to do.
//!
//! Snapshots and clones never copy data:
//! - snapshot S of volume V: an RBD snapshot `V@csi-snap-S`, cloned (clone
//!   v2) into the image `csi-snap-S`, after which `V@csi-snap-S` is removed
//!   (librbd keeps it in V's trash namespace while the clone needs it). The
//!   snapshot image gets its own RBD snapshot `haina-restore`;
//! - restore from S: a clone of `csi-snap-S@haina-restore`;
//! - clone of volume V into N: a temporary `V@csi-vol-N`, cloned to
//!   `csi-vol-N`, then removed the same way;
//! - a new clone whose chain of parents is deeper than `clone_depth_limit`
//!   is flattened (the only full copy, and only at the limit).
//!
//! Deleting an image that clones still depend on (a volume with snapshots,
//! a snapshot with restores) cannot remove it: it is marked
//! `haina.deleted`, which hides it from the CO, and removed by garbage
//! collection when its last dependant goes. So a snapshot outlives its
//! source volume, and a volume with snapshots can still be deleted.
//!
//! Group snapshots ([`group`]): every member frozen (if mounted here) or in
//! an RBD group snapshot, then per-member snapshot images made like the
//! ones above (clones), brought to the group's point in time.
//!
//! Fencing: publications live in metadata, and ControllerPublish also
//! checks the image's watchers against the nodes' attach records, so a node
//! that still has the image open without a publication (a stale mapping)
//! is named in the FAILED_PRECONDITION. Single-writer attachments hold the
//! exclusive lock for as long as they are attached.
//!
//! Nodes: node plugins register and heartbeat in the pool's node registry
//! ([`nodes`]), so ControllerPublish refuses a node ID no plugin has
//! (NOT_FOUND) or one that stopped heartbeating (FAILED_PRECONDITION).

pub mod conn;
pub mod crypt;
mod group;
pub mod meta;
pub mod nodes;
pub mod qos;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use haina_rbd::{Features, Image, ParentInfo};

use self::conn::{Conn, Connections, ceph_err};
use self::meta::{EncryptionRecord, Kind, Meta};
use super::{Attachment, Backend, CreateSpec, GroupSpec};
use crate::attach::{self, Mounter, OpenMode, Target, Unlock};
use crate::config::RbdConfig;
use crate::error::{Error, Result};
use crate::ids::{GroupSnapshotId, ObjectId, PoolName, SnapshotId, VolumeId};
use crate::volume::{
    AccessType, Capability, Capacity, ContentSource, GroupSnapshot, Publication, Secrets, Segments,
    Snapshot, Volume,
};

/// ENOTEMPTY from rbd_remove: the image has snapshots that clones use.
const ENOTEMPTY: i32 = 39;
/// Generations probed before giving up (a safety net, never reached).
const MAX_GENERATIONS: u32 = 1000;

pub struct RbdPool {
    name: PoolName,
    conns: std::sync::Arc<Connections>,
    /// The node registry's settings (see [`nodes`]).
    registry: nodes::Settings,
    /// Set while this process heartbeats into the registry as `node_id`.
    announced: std::sync::Arc<std::sync::atomic::AtomicBool>,
    features: Features,
    mounter: Mounter,
    clone_depth_limit: u32,
    node_id: String,
    /// `<data-dir>/rbd/<pool>` (canonical): FUSE mount points, logs, pids.
    node_dir: PathBuf,
    /// The last health answer and when it was made.
    health: std::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

/// How long a health answer (monitors reachable or not) is reused.
const HEALTH_TTL: std::time::Duration = std::time::Duration::from_secs(3);
/// How long the monitor probe behind a health answer may take.
const HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);

/// An image slot of an object: the present generation, or where a new one goes.
enum Slot {
    Present {
        image: String,
        meta: Meta,
        size: u64,
    },
    Missing {
        image: String,
    },
    /// The image is another haina pool's (its `haina.pool` says so).
    Foreign {
        image: String,
        owner: String,
    },
}

fn is_errno(e: &haina_rbd::Error, errno: i32) -> bool {
    e.errno() == Some(errno)
}

fn now_secs() -> u64 {
    crate::volume::now_unix().0 as u64
}

fn default_features() -> Features {
    Features::LAYERING
        | Features::EXCLUSIVE_LOCK
        | Features::OBJECT_MAP
        | Features::FAST_DIFF
        | Features::DEEP_FLATTEN
}

impl RbdPool {
    /// Checks the config; connects lazily, on first use.
    pub fn open(name: PoolName, cfg: &RbdConfig, node_id: String, data_dir: &Path) -> Result<Self> {
        let bad = |m: String| Error::InvalidArgument(format!("pool {name}: {m}"));
        if cfg.rados_pool.is_empty() {
            return Err(bad("rados_pool is required".into()));
        }
        if cfg.monitors.is_empty() && cfg.ceph_conf.is_none() {
            return Err(bad("set monitors or ceph_conf".into()));
        }
        let mounter: Mounter = cfg.mounter.parse().map_err(|e: Error| e.context(&name))?;
        let features = if cfg.image_features.is_empty() {
            default_features()
        } else {
            let mut f = Features::NONE;
            for n in &cfg.image_features {
                f |= Features::from_name(n)
                    .ok_or_else(|| bad(format!("unknown image feature {n:?}")))?;
            }
            f
        };
        if !features.contains(Features::LAYERING) {
            return Err(bad(
                "image_features must include layering (snapshots and clones are clones)".into(),
            ));
        }
        let registry = nodes::Settings::from_config(&name, cfg)?;
        let node_dir = data_dir.join("rbd").join(name.as_str());
        std::fs::create_dir_all(&node_dir)
            .map_err(|e| Error::internal(format!("creating {}", node_dir.display()), e))?;
        let node_dir = std::fs::canonicalize(&node_dir)
            .map_err(|e| Error::internal(format!("resolving {}", node_dir.display()), e))?;
        let conns = Connections::for_pool(&name, cfg);
        let addr = conns.addr();
        tracing::info!(pool = %name, rados_pool = %addr.rados_pool, namespace = %addr.namespace,
            mon_host = %addr.mon_host, node_registry = %registry.describe(),
            mounter = mounter.as_str(), features = %features, "rbd pool configured");
        Ok(Self {
            name,
            conns: std::sync::Arc::new(conns),
            registry,
            announced: Default::default(),
            features,
            mounter,
            clone_depth_limit: cfg.clone_depth_limit,
            node_id,
            node_dir,
            health: Default::default(),
        })
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

    fn rados_pool(&self) -> &str {
        &self.conns.addr().rados_pool
    }

    fn namespace(&self) -> &str {
        &self.conns.addr().namespace
    }

    /// Whether a parent link points into this pool's own namespace.
    fn is_home(&self, pool: &str, namespace: &str) -> bool {
        pool == self.rados_pool() && namespace == self.namespace()
    }

    /// The image's haina pool, when its metadata names another one: such an
    /// image is never listed, deleted, cloned or attached by this pool.
    fn foreign_owner(&self, meta: &Meta) -> Option<String> {
        meta.owner()
            .filter(|o| *o != self.name.as_str())
            .map(String::from)
    }

    /// Maps a Ceph error, dropping the connection if it is the culprit.
    fn ck<T>(&self, c: &Conn, what: impl FnOnce() -> String, r: haina_rbd::Result<T>) -> Result<T> {
        r.map_err(|e| {
            self.conns.check(c, &e);
            ceph_err(what(), e)
        })
    }

    fn open_rw(&self, c: &Conn, image: &str) -> Result<Image> {
        self.ck(c, || format!("opening image {image}"), c.io.open(image))
    }

    fn read_meta(&self, c: &Conn, img: &Image) -> Result<Meta> {
        let list = self.ck(
            c,
            || format!("reading the metadata of {}", img.name()),
            img.metadata_list(),
        )?;
        Ok(Meta::from_list(list))
    }

    /// Opens read-only; `None` if the image does not exist.
    fn try_open_ro(&self, c: &Conn, image: &str) -> Result<Option<Image>> {
        match c.io.open_read_only(image) {
            Ok(img) => Ok(Some(img)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => self.ck(c, || format!("opening image {image}"), Err(e)),
        }
    }

    /// The present generation of an object, else the name for a new one.
    fn resolve(&self, c: &Conn, kind: Kind, object: &str) -> Result<Slot> {
        for generation in 0..MAX_GENERATIONS {
            let image = meta::image_name(kind, object, generation);
            let Some(img) = self.try_open_ro(c, &image)? else {
                return Ok(Slot::Missing { image });
            };
            let meta = self.read_meta(c, &img)?;
            if let Some(owner) = self.foreign_owner(&meta) {
                return Ok(Slot::Foreign { image, owner });
            }
            if !meta.is_deleted() {
                let size = self.ck(c, || format!("size of {image}"), img.size())?;
                return Ok(Slot::Present { image, meta, size });
            }
        }
        Err(Error::internal(
            format!("object {object}"),
            io::Error::other("too many deleted generations"),
        ))
    }

    /// The complete, present image of an object, with its metadata.
    fn live(&self, c: &Conn, kind: Kind, object: &str) -> Result<Option<(String, Meta, u64)>> {
        Ok(match self.resolve(c, kind, object)? {
            Slot::Present { image, meta, size } if meta.is_complete(&image) => {
                Some((image, meta, size))
            }
            _ => None,
        })
    }

    fn volume_of(&self, id: &VolumeId, image: &str, meta: &Meta, size: u64) -> Result<Volume> {
        meta.volume(id, image, size)
    }

    /// Number of ancestors of an image (clone depth).
    fn depth(&self, c: &Conn, img: &Image) -> Result<u32> {
        let mut depth = 0;
        let mut parent = self.ck(c, || "reading a parent".into(), img.parent_info())?;
        while let Some(p) = parent {
            depth += 1;
            if depth > 64 || p.image_in_trash {
                break;
            }
            let io = if self.is_home(&p.pool_name, &p.pool_namespace) {
                c.io.clone()
            } else {
                self.ck(
                    c,
                    || format!("pool {}/{}", p.pool_name, p.pool_namespace),
                    c.cluster.ioctx_in(&p.pool_name, &p.pool_namespace),
                )?
            };
            let Ok(up) = io.open_read_only(&p.image_name) else {
                break;
            };
            parent = self.ck(c, || "reading a parent".into(), up.parent_info())?;
        }
        Ok(depth)
    }

    /// Flattens a new clone if its chain got deeper than the limit.
    fn limit_depth(&self, c: &Conn, img: &Image) -> Result<()> {
        let depth = self.depth(c, img)?;
        if depth > self.clone_depth_limit {
            tracing::info!(
                image = img.name(),
                depth,
                limit = self.clone_depth_limit,
                "clone chain too deep; flattening"
            );
            self.ck(c, || format!("flattening {}", img.name()), img.flatten())?;
        }
        Ok(())
    }

    /// Replaces whatever `haina.*` keys a clone inherited with `keys`, then
    /// writes `haina.id` last: from then on the image is complete.
    fn write_meta(&self, c: &Conn, img: &Image, keys: &[(&str, String)]) -> Result<()> {
        let name = img.name().to_string();
        let what = || format!("writing the metadata of {name}");
        let mut keys = keys.to_vec();
        keys.push((meta::KEY_POOL, self.name.to_string()));
        let keys = &keys[..];
        for (k, _) in self.read_meta(c, img)?.0 {
            if !keys.iter().any(|(want, _)| *want == k) {
                self.ck(c, what, img.metadata_remove(&k))?;
            }
        }
        for (k, v) in keys {
            self.ck(c, what, img.metadata_set(k, v))?;
        }
        self.ck(c, what, img.metadata_set(meta::KEY_ID, &name))
    }

    /// Makes `child` a clone of `parent@snap` (or finds it made). A clone
    /// of another parent (an abandoned create) is replaced.
    fn ensure_clone(&self, c: &Conn, parent: &str, snap: &str, child: &str) -> Result<()> {
        if let Some(img) = self.try_open_ro(c, child)? {
            let p = self.ck(c, || format!("parent of {child}"), img.parent_info())?;
            if p.is_some_and(|p| p.image_name == parent) {
                return Ok(());
            }
            // An encrypted clone flattened before a crash (crypt::flatten_new).
            if crypt::flattened_from(&img)?.as_deref() == Some(parent) {
                return Ok(());
            }
            drop(img);
            tracing::warn!(
                image = child,
                parent,
                "replacing an incomplete image of another origin"
            );
            self.ck(c, || format!("removing {child}"), c.io.remove_image(child))?;
        }
        match c.io.clone_image(&c.io, parent, snap, child, self.features) {
            Ok(()) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => self.ck(c, || format!("cloning {parent}@{snap} to {child}"), Err(e)),
        }
    }

    /// Creates an RBD snapshot if absent.
    fn ensure_snap(&self, c: &Conn, img: &Image, snap: &str) -> Result<()> {
        match img.snap_create(snap) {
            Ok(()) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => self.ck(c, || format!("snapshotting {}@{snap}", img.name()), Err(e)),
        }
    }

    /// Removes an RBD snapshot if present (clone v2 moves a snapshot that
    /// clones use to the trash namespace).
    fn drop_snap(&self, c: &Conn, image: &str, snap: &str) -> Result<()> {
        let Some(_) = self.try_open_ro(c, image)? else {
            return Ok(());
        };
        let img = self.open_rw(c, image)?;
        match img.snap_remove(snap) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => self.ck(c, || format!("removing {image}@{snap}"), Err(e)),
        }
    }

    /// The source image a create copies from: `(parent image, parent snap,
    /// its encryption)`, once its encryption is found to agree with the new
    /// volume's (`wanted`). For a volume source the temporary snapshot is
    /// made here.
    fn source_of(
        &self,
        c: &Conn,
        source: &ContentSource,
        child: &str,
        wanted: Option<haina_rbd::EncryptionFormat>,
    ) -> Result<(String, String, Option<EncryptionRecord>)> {
        let (field, raw, kind) = match source {
            ContentSource::Snapshot(s) => (
                "volume_content_source.snapshot.snapshot_id",
                s,
                Kind::Snapshot,
            ),
            ContentSource::Volume(v) => ("volume_content_source.volume.volume_id", v, Kind::Volume),
        };
        let id = VolumeId::parse_existing(field, raw)?;
        if id.pool() != &self.name {
            return Err(Error::InvalidArgument(format!(
                "{field} {raw} is in pool {}, but the new volume is in pool {}; \
                 copy across pools is not supported",
                id.pool(),
                self.name
            )));
        }
        let (image, source_meta, _) = self
            .live(c, kind, id.object())?
            .ok_or_else(|| Error::NotFound(format!("{field} {raw} does not exist")))?;
        let encryption = source_meta.encryption(&image)?;
        crypt::check_source(encryption.as_ref(), wanted, field, raw)?;
        match kind {
            Kind::Snapshot => Ok((image, meta::RESTORE_SNAP.to_string(), encryption)),
            Kind::Volume => {
                // The temporary snapshot is named after the child, so a retry
                // finds it; once the clone exists it is not needed.
                if self.try_open_ro(c, child)?.is_none() {
                    let img = self.open_rw(c, &image)?;
                    let _frozen = self.freeze_if_mounted_here(&id)?;
                    self.ensure_snap(c, &img, child)?;
                }
                Ok((image, child.to_string(), encryption))
            }
        }
    }

    fn build_volume(
        &self,
        c: &Conn,
        spec: &CreateSpec,
        image: &str,
        secrets: &Secrets,
    ) -> Result<Volume> {
        let wanted = crypt::wanted(&spec.context)?;
        let encryption = match &spec.source {
            None => {
                // An encrypted volume is formatted: its passphrase first,
                // before anything changes in Ceph.
                let passphrase = wanted
                    .map(|f| {
                        let why = format!("create volume {}, which is encrypted ({f})", spec.id);
                        crypt::passphrase(secrets, &why, "provisioner")
                    })
                    .transpose()?;
                if let Some(img) = self.try_open_ro(c, image)?
                    && (self
                        .ck(c, || format!("parent of {image}"), img.parent_info())?
                        .is_some()
                        || (wanted.is_none() && self.is_encrypted(c, &img)?))
                {
                    // Left by an interrupted create of another kind.
                    drop(img);
                    self.ck(c, || format!("removing {image}"), c.io.remove_image(image))?;
                }
                match c.io.create_image(image, spec.capacity, self.features) {
                    Ok(()) => {}
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => self.ck(c, || format!("creating image {image}"), Err(e))?,
                }
                match (wanted, &passphrase) {
                    (Some(f), Some(p)) => Some(self.ensure_formatted(c, image, f, p)?),
                    _ => None,
                }
            }
            Some(source) => {
                let (parent, snap, encryption) = self.source_of(c, source, image, wanted)?;
                self.ensure_clone(c, &parent, &snap, image)?;
                if matches!(source, ContentSource::Volume(_)) {
                    self.drop_snap(c, &parent, &snap)?;
                }
                encryption
            }
        };
        crate::failpoint::hit("rbd-after-create")?;
        let img = self.open_rw(c, image)?;
        let size = self.ck(c, || format!("size of {image}"), img.size())?;
        // The raw image holds the encryption header before the capacity.
        let raw = spec.capacity + encryption.map_or(0, |e| e.header);
        if size < raw {
            self.ck(c, || format!("resizing {image}"), img.resize(raw))?;
        }
        match (&spec.source, &encryption) {
            (None, _) => {}
            (Some(_), None) => self.limit_depth(c, &img)?,
            // librbd 16.2 fails I/O to an encrypted clone grown past its
            // parent (EINVAL in the header-sized range after the parent's
            // end), so an encrypted restore or clone is made flat: a full
            // copy of the ciphertext, done now, while nobody has it open (a
            // flatten forwarded to an owner with encryption loaded would
            // encrypt the header again). Every encrypted volume is flat.
            (Some(_), Some(_)) => crypt::flatten_new(&img)?,
        }
        let mut keys = vec![
            (meta::KEY_NAME, spec.name.clone()),
            (meta::KEY_CONTEXT, to_json(&spec.context)?),
            (meta::KEY_CREATED, now_secs().to_string()),
        ];
        if let Some(s) = &spec.source {
            keys.push((meta::KEY_SOURCE, to_json(s)?));
        }
        if let Some(e) = &encryption {
            keys.push((meta::KEY_ENCRYPTION, to_json(e)?));
        }
        // Exactly the requested limits: a clone's inherited ones go.
        keys.extend(qos::meta_keys(&spec.qos));
        self.write_meta(c, &img, &keys)?;
        let meta = self.read_meta(c, &img)?;
        self.volume_of(&spec.id, image, &meta, size.max(raw))
    }

    /// Formats a new image for encryption (or finds it formatted by an
    /// earlier, interrupted attempt) and records how (`haina.encryption`).
    /// The image is incomplete (no `haina.id`), so it holds no data yet
    /// and formatting it again is harmless.
    fn ensure_formatted(
        &self,
        c: &Conn,
        image: &str,
        format: haina_rbd::EncryptionFormat,
        passphrase: &haina_rbd::Secret,
    ) -> Result<EncryptionRecord> {
        let img = self.open_rw(c, image)?;
        if let Some(rec) = self.read_meta(c, &img)?.encryption(image)?
            && rec.format == format
        {
            return Ok(rec);
        }
        let rec = crypt::format(&img, format, passphrase)?;
        // That handle has the encryption loaded: metadata through a plain one.
        drop(img);
        crate::failpoint::hit("rbd-after-format")?;
        let img = self.open_rw(c, image)?;
        self.ck(
            c,
            || format!("recording the encryption of {image}"),
            img.metadata_set(meta::KEY_ENCRYPTION, &to_json(&rec)?),
        )?;
        tracing::info!(image, format = %format, header = rec.header, "formatted for encryption");
        Ok(rec)
    }

    /// Whether an (incomplete) image was made encrypted: recorded so, or a
    /// LUKS header at its start (a format interrupted before the record).
    fn is_encrypted(&self, c: &Conn, img: &Image) -> Result<bool> {
        Ok(self.read_meta(c, img)?.encryption(img.name())?.is_some() || crypt::has_header(img)?)
    }

    /// Moves a plain image to the trash and purges it on a background
    /// thread. A purge that a crash interrupts leaves the image in the RBD
    /// trash (named, so `rbd trash ls` shows it), where the next purge of
    /// this pool finds it.
    fn trash_and_purge(&self, c: &Conn, image: &str, image_id: String) -> Result<()> {
        match c.io.trash_move(image) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) if e.is_busy() => {
                return Err(Error::FailedPrecondition(format!(
                    "image {}/{image} is still open by a client: {e}",
                    self.conns.addr().home()
                )));
            }
            Err(e) => return self.ck(c, || format!("moving {image} to the trash"), Err(e)),
        }
        tracing::info!(image, id = %image_id, "moved image to the trash; purging in the background");
        let io = c.io.clone();
        let image = image.to_string();
        let handle = std::thread::spawn(move || purge_trash(&io, &image, &image_id));
        let mut purges = PURGES.lock().unwrap_or_else(|p| p.into_inner());
        purges.retain(|h| !h.is_finished());
        purges.push(handle);
        Ok(())
    }

    /// Removes an image of `kind`, or (if clones still depend on it) marks it
    /// deleted; then collects garbage up its parent chain.
    fn remove_or_hide(&self, c: &Conn, image: &str, parent: Option<ParentInfo>) -> Result<()> {
        match c.io.remove_image(image) {
            Ok(()) => {
                tracing::info!(image, "removed image");
                if let Some(p) = &parent {
                    // The temporary snapshot of a clone that never completed.
                    if p.snap_name == image && self.is_home(&p.pool_name, &p.pool_namespace) {
                        self.drop_snap(c, &p.image_name, &p.snap_name)?;
                    }
                }
                self.collect_below(c, image);
                self.collect(c, parent);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) if is_errno(&e, ENOTEMPTY) => {
                tracing::info!(
                    image,
                    "image has dependent clones; hiding it until they are gone"
                );
                let img = self.open_rw(c, image)?;
                let what = || format!("marking {image} deleted");
                self.ck(
                    c,
                    what,
                    img.metadata_set(meta::KEY_DELETED, &now_secs().to_string()),
                )?;
                self.ck(c, what, img.metadata_remove(meta::KEY_ID))?;
                Ok(())
            }
            Err(e) if e.is_busy() => Err(Error::FailedPrecondition(format!(
                "image {}/{image} is still open by a client: {e}",
                self.conns.addr().home()
            ))),
            Err(e) => self.ck(c, || format!("removing image {image}"), Err(e)),
        }
    }

    /// Garbage collection up a parent chain: removes deleted parents that
    /// nothing depends on any more. Failures only stop the walk.
    fn collect(&self, c: &Conn, mut parent: Option<ParentInfo>) {
        while let Some(p) = parent.take() {
            if !self.is_home(&p.pool_name, &p.pool_namespace) || p.image_in_trash {
                return;
            }
            match self.try_remove_deleted(c, &p.image_name) {
                Some(up) => {
                    self.collect_below(c, &p.image_name);
                    parent = up;
                }
                None => return,
            }
        }
    }

    /// After removing generation g of an object, removes deleted
    /// generations below it that nothing depends on (highest first).
    fn collect_below(&self, c: &Conn, image: &str) {
        let Some((kind, object, generation)) = meta::parse_image_name(image) else {
            return;
        };
        for g in (0..generation).rev() {
            let name = meta::image_name(kind, object, g);
            match self.try_remove_deleted(c, &name) {
                Some(up) => self.collect(c, up),
                None => return,
            }
        }
    }

    /// Removes `image` if it is marked deleted, is the highest generation
    /// and has no dependants. Returns its parent when removed.
    fn try_remove_deleted(&self, c: &Conn, image: &str) -> Option<Option<ParentInfo>> {
        let img = self.try_open_ro(c, image).ok()??;
        let meta = self.read_meta(c, &img).ok()?;
        if !meta.is_deleted() || self.foreign_owner(&meta).is_some() {
            return None;
        }
        if let Some((kind, object, g)) = meta::parse_image_name(image) {
            let next = meta::image_name(kind, object, g + 1);
            if !matches!(self.try_open_ro(c, &next), Ok(None)) {
                return None;
            }
        }
        let up = img.parent_info().ok()?;
        drop(img);
        match c.io.remove_image(image) {
            Ok(()) => {
                tracing::info!(image, "garbage-collected deleted image");
                Some(up)
            }
            Err(_) => None,
        }
    }

    fn fuse_paths(&self, id: &VolumeId) -> attach::fuse::Paths {
        attach::fuse::Paths::new(&self.node_dir, id.object())
    }

    /// A krbd or rbd-nbd mapping of this volume (any generation of its
    /// image), found from the kernel alone.
    /// Every complete image of `kind` in the pool (interrupted creates and
    /// hidden parents left out): its ID, image name, open image and metadata.
    fn complete_images(
        &self,
        c: &Conn,
        kind: Kind,
    ) -> Result<Vec<(ObjectId, String, Image, Meta)>> {
        let names = self.ck(c, || "listing images".into(), c.io.list_images())?;
        let mut out = Vec::new();
        for name in names {
            let Some((k, object, _)) = meta::parse_image_name(&name) else {
                continue;
            };
            if k != kind {
                continue;
            }
            let Some(img) = self.try_open_ro(c, &name)? else {
                continue;
            };
            let meta = self.read_meta(c, &img)?;
            if !meta.is_complete(&name) || self.foreign_owner(&meta).is_some() {
                continue;
            }
            let id = ObjectId::parse_existing("image", &format!("{}.{object}", self.name))?;
            out.push((id, name, img, meta));
        }
        Ok(out)
    }

    /// When the volume is attached and mounted on this node (controller and
    /// node plugin together), freezes its filesystem for the duration of a
    /// snapshot, so the snapshot is filesystem-consistent, not only
    /// crash-consistent.
    fn freeze_if_mounted_here(&self, id: &VolumeId) -> Result<Option<crate::node::FreezeGuard>> {
        match self.attachment(id)? {
            Some(a) => {
                let host: haina_sys::host::SharedHost =
                    std::sync::Arc::new(haina_sys::host::RealHost);
                crate::node::freeze_if_mounted(&host, &a.device)
            }
            None => Ok(None),
        }
    }

    fn kernel_attachment(&self, id: &VolumeId) -> Option<Attachment> {
        let (pool, ns) = (self.rados_pool(), self.namespace());
        let mut found = Vec::new();
        if attach::krbd::available().is_ok() {
            found.extend(attach::krbd::mapped_in(pool, ns));
        }
        if attach::nbd::available().is_ok() {
            found.extend(attach::nbd::mapped_in(pool, ns));
        }
        found.into_iter().find(|a| {
            let image = a.backing.rsplit('/').next().unwrap_or_default();
            meta::parse_image_name(image)
                .is_some_and(|(kind, object, _)| kind == Kind::Volume && object == id.object())
        })
    }
}

/// Background purges still running (so that shutdown can wait for them).
static PURGES: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits (at most `limit`) for background trash purges to finish; called
/// on graceful shutdown so a stopping plugin leaves no trash behind.
pub fn wait_for_purges(limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut purges = PURGES.lock().unwrap_or_else(|p| p.into_inner());
        purges.retain(|h| !h.is_finished());
        if purges.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        drop(purges);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Deletes a trashed image's objects; retried a few times, since a client
/// that just closed it may still hold a watch for a moment. Then sweeps
/// haina's images that an earlier purge left in the trash (a crash, or a
/// purge that gave up) once they have been there a minute.
fn purge_trash(io: &haina_rbd::IoCtx, image: &str, image_id: &str) {
    purge_one(io, image, image_id, 5);
    let now = now_secs() as i64;
    match io.trash_list() {
        Ok(entries) => {
            for (id, name, deleted) in entries {
                if meta::parse_image_name(&name).is_some() && now - deleted > 60 {
                    purge_one(io, &name, &id, 1);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing the RBD trash failed"),
    }
}

fn purge_one(io: &haina_rbd::IoCtx, image: &str, image_id: &str, attempts: u64) {
    for attempt in 1..=attempts {
        match io.trash_remove(image_id) {
            Ok(()) => {
                tracing::info!(image, id = image_id, "purged image from the trash");
                return;
            }
            Err(e) if e.is_not_found() => return,
            Err(e) => {
                tracing::warn!(image, id = image_id, attempt, error = %e, "purging from the trash failed");
                std::thread::sleep(std::time::Duration::from_secs(attempt));
            }
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::internal("encoding metadata", e))
}

impl Backend for RbdPool {
    fn name(&self) -> &PoolName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "rbd"
    }

    fn topology(&self) -> Option<Segments> {
        None
    }

    fn check_capability(&self, cap: &Capability) -> Result<()> {
        let multi_writer = cap.mode.is_multi_node() && !cap.mode.is_read_only();
        if multi_writer && matches!(cap.access, AccessType::Mount { .. }) {
            return Err(Error::InvalidArgument(format!(
                "access mode {} with a filesystem is not supported by rbd pool {:?}: two nodes \
                 mounting one ext4/xfs corrupt it; use a block volume, or a single-node mode",
                cap.mode.name(),
                self.name.as_str()
            )));
        }
        Ok(())
    }

    fn health(&self) -> Result<()> {
        haina_rbd::library_versions()
            .map(drop)
            .map_err(|e| ceph_err(format!("pool {}", self.name), e))?;
        // Reachability of the monitors, answered from a short cache so a
        // Probe storm costs one probe, and bounded by a deadline.
        let mut cached = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, answer)) = &*cached
            && at.elapsed() < HEALTH_TTL
        {
            return answer.clone().map_err(Error::Unavailable);
        }
        drop(cached);
        let addr = self.conns.addr().clone();
        let answer = match haina_sys::deadline::run_for(
            format!("probing the Ceph monitors of pool {}", self.name),
            HEALTH_DEADLINE,
            move || conn::reachable(&addr).map_err(|e| e.to_string()),
        ) {
            Ok(a) => a,
            Err(stalled) => Err(stalled.to_string()),
        };
        cached = self.health.lock().unwrap_or_else(|p| p.into_inner());
        *cached = Some((std::time::Instant::now(), answer.clone()));
        answer.map_err(Error::Unavailable)
    }

    fn describe(&self) -> Vec<(String, String)> {
        let addr = self.conns.addr();
        vec![
            ("radosPool".into(), addr.rados_pool.clone()),
            ("monitors".into(), addr.mon_host.clone()),
            ("mounter".into(), self.mounter.as_str().into()),
            ("imageFeatures".into(), self.features.to_string()),
            ("cloneDepthLimit".into(), self.clone_depth_limit.to_string()),
            ("nodeRegistry".into(), self.registry.describe()),
        ]
    }

    fn create_volume(&self, spec: &CreateSpec, secrets: &Secrets) -> Result<Volume> {
        self.own(&spec.id)?;
        let c = self.conns.get(secrets)?;
        let image = match self.resolve(&c, Kind::Volume, spec.id.object())? {
            Slot::Present { image, meta, size } if meta.is_complete(&image) => {
                let v = self.volume_of(&spec.id, &image, &meta, size)?;
                if v.name != spec.name
                    || v.source != spec.source
                    || v.context != spec.context
                    || v.qos != spec.qos
                {
                    return Err(Error::AlreadyExists(format!(
                        "volume {} already exists with a different name, source, parameters \
                         or mutable parameters",
                        spec.id
                    )));
                }
                return Ok(v);
            }
            Slot::Foreign { image, owner } => {
                return Err(Error::AlreadyExists(format!(
                    "volume {}: image {}/{image} already exists and belongs to haina pool \
                     {owner:?}; refusing to take it over",
                    spec.id,
                    self.conns.addr().home()
                )));
            }
            // An interrupted create: finish it.
            Slot::Present { image, .. } | Slot::Missing { image } => image,
        };
        self.build_volume(&c, spec, &image, secrets)
    }

    fn delete_volume(&self, id: &VolumeId, secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let (image, meta) = match self.resolve(&c, Kind::Volume, id.object())? {
            Slot::Present { image, meta, .. } => (image, meta),
            Slot::Missing { .. } => return Ok(()),
            Slot::Foreign { image, owner } => {
                // Never delete across pools: this volume does not exist here.
                tracing::warn!(volume = %id, image, owner, "image belongs to another haina pool; not deleting it");
                return Ok(());
            }
        };
        if meta.is_complete(&image) {
            let pubs = meta.publications(&image)?;
            if !pubs.is_empty() {
                let nodes: Vec<_> = pubs.keys().cloned().collect();
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is still published to node(s) {}; unpublish it first",
                    nodes.join(", ")
                )));
            }
        }
        let img = self.open_rw(&c, &image)?;
        let watchers: Vec<_> = self
            .ck(&c, || format!("watchers of {image}"), img.list_watchers())?
            .into_iter()
            .filter(|w| w.id as u64 != c.instance_id())
            .collect();
        if !watchers.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} (image {}/{image}) is still in use by {}; detach it there first",
                self.conns.addr().home(),
                meta::describe_watchers(&watchers, &meta.attachments())
            )));
        }
        let parent = self.ck(&c, || format!("parent of {image}"), img.parent_info())?;
        // Snapshots left on a volume are temporaries of snapshot and clone
        // operations; those still needed move to the trash namespace.
        for s in self.ck(&c, || format!("snapshots of {image}"), img.snap_list())? {
            match img.snap_remove(&s.name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => self.ck(&c, || format!("removing {image}@{}", s.name), Err(e))?,
            }
        }
        // A plain volume (no parent, and no snapshot left in any namespace,
        // so no clone depends on it) goes to the RBD trash, which frees its
        // name at once; the purge of its objects runs in the background.
        let plain = parent.is_none()
            && self
                .ck(&c, || format!("snapshots of {image}"), img.snap_list())?
                .is_empty();
        let image_id = self.ck(&c, || format!("id of {image}"), img.id())?;
        drop(img);
        crate::failpoint::hit("rbd-delete-between")?;
        if plain {
            return self.trash_and_purge(&c, &image, image_id);
        }
        self.remove_or_hide(&c, &image, parent)
    }

    fn get_volume(&self, id: &VolumeId, secrets: &Secrets) -> Result<Option<Volume>> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        self.live(&c, Kind::Volume, id.object())?
            .map(|(image, meta, size)| self.volume_of(id, &image, &meta, size))
            .transpose()
    }

    fn list_volumes(&self, secrets: &Secrets) -> Result<Vec<Volume>> {
        let c = self.conns.get(secrets)?;
        let mut out = Vec::new();
        for (id, name, img, meta) in self.complete_images(&c, Kind::Volume)? {
            let size = self.ck(&c, || format!("size of {name}"), img.size())?;
            out.push(self.volume_of(&id, &name, &meta, size)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn capacity(&self, secrets: &Secrets) -> Result<Capacity> {
        let c = self.conns.get(secrets)?;
        let st = self.ck(
            &c,
            || format!("statistics of pool {}", self.rados_pool()),
            c.cluster.pool_stats(self.rados_pool()),
        )?;
        Ok(Capacity {
            available: st.bytes_avail,
            maximum_volume_size: None,
        })
    }

    fn set_publication(
        &self,
        id: &VolumeId,
        node: &str,
        publication: Option<Publication>,
        secrets: &Secrets,
    ) -> Result<Volume> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let (image, _, _) = self
            .live(&c, Kind::Volume, id.object())?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        let img = self.open_rw(&c, &image)?;
        let meta = self.read_meta(&c, &img)?;
        let mut pubs = meta.publications(&image)?;
        let what = || format!("recording publications of {image}");
        match publication {
            Some(p) => {
                let watchers =
                    self.ck(&c, || format!("watchers of {image}"), img.list_watchers())?;
                let records = meta.attachments();
                let stale = meta::stale_holders(&watchers, c.instance_id(), &records, &pubs, node);
                if !stale.is_empty() {
                    let list: Vec<String> = stale.iter().map(ToString::to_string).collect();
                    return Err(Error::FailedPrecondition(format!(
                        "volume {id} still has a stale mapping on {} without a publication; \
                         unstage it there, or if that node is dead, fence it with \
                         `ceph osd blocklist add {}` (see docs/rbd.md)",
                        list.join(", "),
                        stale[0].addr
                    )));
                }
                for gone in meta::gone_records(&watchers, &records) {
                    let key = format!("{}{gone}", meta::ATTACH_PREFIX);
                    self.ck(&c, what, img.metadata_remove(&key))?;
                }
                pubs.insert(node.to_string(), p);
            }
            None => {
                pubs.remove(node);
            }
        }
        if pubs.is_empty() {
            self.ck(&c, what, img.metadata_remove(meta::KEY_PUBLICATIONS))?;
        } else {
            self.ck(
                &c,
                what,
                img.metadata_set(meta::KEY_PUBLICATIONS, &to_json(&pubs)?),
            )?;
        }
        let size = self.ck(&c, || format!("size of {image}"), img.size())?;
        let mut v = self.volume_of(id, &image, &meta, size)?;
        v.publications = pubs;
        Ok(v)
    }

    fn check_publish_node(&self, node_id: &str, secrets: &Secrets) -> Result<()> {
        if !self.registry.enforced() {
            return Ok(());
        }
        // A controller that is this node's plugin knows the node exists,
        // whether or not its first heartbeat has landed yet.
        if node_id == self.node_id && self.announced.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let c = self.conns.get(secrets)?;
        let home = self.conns.addr().home();
        let entry = self.ck(
            &c,
            || format!("reading the node registry ({} in {home})", nodes::OBJECT),
            nodes::lookup(&c.io, node_id),
        )?;
        nodes::check_publish(
            &self.name,
            &home,
            node_id,
            entry.as_ref(),
            now_secs(),
            self.registry.stale_after.as_secs(),
        )
    }

    fn qos_support(&self) -> crate::qos::Support {
        qos::support(self.name.as_str(), self.mounter)
    }

    /// Sets or removes the image's `conf_rbd_qos_*` keys (only those that
    /// differ); every librbd client of the image, the FUSE server included,
    /// applies them live.
    fn set_qos(&self, id: &VolumeId, limits: crate::qos::Limits, secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let (image, meta, _) = self
            .live(&c, Kind::Volume, id.object())?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        let img = self.open_rw(&c, &image)?;
        let what = || format!("setting the QoS limits of {image}");
        for k in crate::qos::Knob::ALL {
            let key = qos::key(k);
            let want = k.get(&limits);
            let have = meta.get(key);
            if want == 0 && have.is_some() {
                self.ck(&c, what, img.metadata_remove(key))?;
            } else if want != 0 && have != Some(want.to_string().as_str()) {
                self.ck(&c, what, img.metadata_set(key, &want.to_string()))?;
            }
        }
        tracing::info!(volume = %id, image, %limits, "QoS limits set");
        // A read-only attachment opens the image without a watch, so no
        // header update reaches it: it keeps its limits until re-attached.
        let read_only: Vec<String> = meta
            .publications(&image)?
            .into_iter()
            .filter(|(_, p)| p.readonly || p.mode.is_read_only())
            .map(|(n, _)| n)
            .collect();
        if !read_only.is_empty() {
            tracing::warn!(volume = %id, nodes = %read_only.join(", "), %limits,
                "read-only attachments of this volume keep their QoS limits until they are staged again");
        }
        Ok(())
    }

    fn expand_volume(&self, id: &VolumeId, size: u64, secrets: &Secrets) -> Result<u64> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let (image, meta, current) = self
            .live(&c, Kind::Volume, id.object())?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        // Sizes here are raw: an encrypted image's header comes on top.
        let encryption = meta.encryption(&image)?;
        let header = encryption.map_or(0, |e| e.header);
        if encryption.is_some() {
            crypt::check_growable(&self.open_rw(&c, &image)?, id)?;
        }
        let raw = size + header;
        if current < raw {
            let img = self.open_rw(&c, &image)?;
            self.ck(&c, || format!("resizing {image} to {raw}"), img.resize(raw))?;
        }
        Ok(current.saturating_sub(header).max(size))
    }

    fn create_snapshot(
        &self,
        id: &SnapshotId,
        name: &str,
        source: &VolumeId,
        secrets: &Secrets,
    ) -> Result<Snapshot> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let image = match self.resolve(&c, Kind::Snapshot, id.object())? {
            Slot::Present { image, meta, .. } if meta.is_complete(&image) => {
                let s = meta.snapshot(id, &image)?.ok_or_else(|| {
                    Error::internal(
                        format!("snapshot image {image}"),
                        io::Error::other("complete but without haina.snapshot"),
                    )
                })?;
                if s.source_volume_id != source.to_string() {
                    return Err(Error::AlreadyExists(format!(
                        "snapshot {name:?} already exists for source volume {}",
                        s.source_volume_id
                    )));
                }
                return Ok(s);
            }
            Slot::Foreign { image, owner } => {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name:?}: image {}/{image} already exists and belongs to haina \
                     pool {owner:?}",
                    self.conns.addr().home()
                )));
            }
            Slot::Present { image, .. } | Slot::Missing { image } => image,
        };
        let (src, src_meta, _) = self
            .live(&c, Kind::Volume, source.object())?
            .ok_or_else(|| Error::NotFound(format!("source_volume_id {source} does not exist")))?;
        // A snapshot of an encrypted volume is a clone: encrypted the same way.
        let encryption = src_meta.encryption(&src)?;
        // The point in time: an RBD snapshot of the source named after the
        // snapshot image, cloned into that image, then let go.
        // An interrupted earlier attempt left the clone: keep it if it is a
        // clone of this source, else (an abandoned request for another
        // source, or one flattened before the crash) start over.
        let existing = match self.try_open_ro(&c, &image)? {
            Some(img) => {
                let parent = self.ck(&c, || format!("parent of {image}"), img.parent_info())?;
                if parent.is_some_and(|p| p.image_name == src) {
                    Some(self.ck(&c, || format!("size of {image}"), img.size())?)
                } else {
                    drop(img);
                    self.ck(
                        &c,
                        || format!("removing {image}"),
                        c.io.remove_image(&image),
                    )?;
                    None
                }
            }
            None => None,
        };
        let size = match existing {
            Some(size) => size,
            None => {
                let s = self.open_rw(&c, &src)?;
                {
                    let _frozen = self.freeze_if_mounted_here(source)?;
                    self.ensure_snap(&c, &s, &image)?;
                }
                let snaps = self.ck(&c, || format!("snapshots of {src}"), s.snap_list())?;
                let size = snaps
                    .iter()
                    .find(|x| x.name == image)
                    .map(|x| x.size)
                    .unwrap_or(0);
                drop(s);
                self.ensure_clone(&c, &src, &image, &image)?;
                size
            }
        };
        crate::failpoint::hit("rbd-snapshot-after-clone")?;
        self.drop_snap(&c, &src, &image)?;
        let img = self.open_rw(&c, &image)?;
        self.limit_depth(&c, &img)?;
        self.ensure_snap(&c, &img, meta::RESTORE_SNAP)?;
        let record = meta::SnapRecord {
            name: name.to_string(),
            source_volume_id: source.to_string(),
            size: size.saturating_sub(encryption.map_or(0, |e| e.header)),
            created: crate::volume::now_unix(),
            group_snapshot_id: None,
        };
        let mut keys = vec![(meta::KEY_SNAPSHOT, to_json(&record)?)];
        if let Some(e) = &encryption {
            keys.push((meta::KEY_ENCRYPTION, to_json(e)?));
        }
        self.write_meta(&c, &img, &keys)?;
        Ok(record.snapshot(id))
    }

    fn delete_snapshot(&self, id: &SnapshotId, secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let image = match self.resolve(&c, Kind::Snapshot, id.object())? {
            Slot::Present { image, .. } => image,
            Slot::Missing { .. } | Slot::Foreign { .. } => return Ok(()),
        };
        let img = self.open_rw(&c, &image)?;
        let parent = self.ck(&c, || format!("parent of {image}"), img.parent_info())?;
        for s in self.ck(&c, || format!("snapshots of {image}"), img.snap_list())? {
            match img.snap_remove(&s.name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => self.ck(&c, || format!("removing {image}@{}", s.name), Err(e))?,
            }
        }
        drop(img);
        self.remove_or_hide(&c, &image, parent)
    }

    fn get_snapshot(&self, id: &SnapshotId, secrets: &Secrets) -> Result<Option<Snapshot>> {
        self.own(id)?;
        let c = self.conns.get(secrets)?;
        let s = match self.live(&c, Kind::Snapshot, id.object())? {
            Some((image, meta, _)) => meta.snapshot(id, &image)?,
            None => None,
        };
        // A group member shows only once its group is complete.
        match s {
            Some(s) if self.member_visible(&c, &s, &mut Default::default())? => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    fn list_snapshots(&self, secrets: &Secrets) -> Result<Vec<Snapshot>> {
        let c = self.conns.get(secrets)?;
        let mut groups = std::collections::HashMap::new();
        let mut out = Vec::new();
        for (id, name, _img, meta) in self.complete_images(&c, Kind::Snapshot)? {
            if let Some(s) = meta.snapshot(&id, &name)?
                && self.member_visible(&c, &s, &mut groups)?
            {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn announce_node(&self) -> Result<Option<Box<dyn super::Presence>>> {
        if !self.registry.registers(&self.name)? {
            tracing::warn!(pool = %self.name, node = %self.node_id,
                registry = %self.registry.describe(),
                "this node plugin does not register in the pool's node registry: a controller \
                 configured like this one publishes to any node ID unchecked; configure `user` + \
                 `keyring` on the pool to register (docs/rbd.md, The node registry)");
            return Ok(None);
        }
        let hb = nodes::Heartbeat::start(
            self.name.clone(),
            self.conns.addr().home(),
            self.conns.clone(),
            self.node_id.clone(),
            self.registry.heartbeat,
            self.announced.clone(),
        )?;
        Ok(Some(Box::new(hb)))
    }

    fn create_group_snapshot(&self, spec: &GroupSpec, secrets: &Secrets) -> Result<GroupSnapshot> {
        self.create_group(spec, secrets)
    }

    fn delete_group_snapshot(&self, id: &GroupSnapshotId, secrets: &Secrets) -> Result<()> {
        self.delete_group(id, secrets)
    }

    fn get_group_snapshot(
        &self,
        id: &GroupSnapshotId,
        secrets: &Secrets,
    ) -> Result<Option<GroupSnapshot>> {
        self.get_group(id, secrets)
    }

    fn attach(&self, id: &VolumeId, secrets: &Secrets) -> Result<Attachment> {
        self.own(id)?;
        if let Some(a) = self.attachment(id)? {
            // Never answer OK over a dead or stalled data path.
            if let Some(reason) = self.data_path_health(id, &a) {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is attached at {} but {reason}; unstage it (NodeUnstageVolume) \
                     to tear it down, then stage it again",
                    a.device.display()
                )));
            }
            return Ok(a);
        }
        let c = self.conns.get(secrets)?;
        let creds = c.credentials();
        let (image, meta, _) = self
            .live(&c, Kind::Volume, id.object())?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        let volume = id.to_string();
        let unlock = crypt::for_attach(&volume, meta.encryption(&image)?, secrets)?;
        let resolved = self
            .mounter
            .resolve_for(unlock.is_some())
            .map_err(|e| Error::from(e).context(format!("volume {id}")))?;
        // krbd cannot enforce QoS limits: never map a limited volume with it.
        let limits = qos::from_meta(&image, &meta.0);
        let mounter = qos::pick_mounter(
            self.mounter,
            resolved,
            &limits,
            attach::nbd::available().is_ok(),
            attach::fuse::available().is_ok(),
        )
        .map_err(|why| Error::FailedPrecondition(format!("volume {id}: {why}")))?;
        if mounter != resolved {
            tracing::info!(volume = %id, mounter = mounter.as_str(), %limits,
                "a volume with QoS limits is not mapped with krbd");
        }
        let pubs: BTreeMap<String, Publication> = meta.publications(&image)?;
        let addr = self.conns.addr();
        let target = Target {
            rados_pool: &addr.rados_pool,
            namespace: &addr.namespace,
            image: &image,
            mon_host: &addr.mon_host,
            ceph_conf: addr.ceph_conf.as_deref(),
            user: &creds.user,
            key: &creds.key,
            mode: OpenMode::for_publication(pubs.get(&self.node_id)),
            node_id: &self.node_id,
            encryption: unlock.as_ref().map(|(format, passphrase)| Unlock {
                volume: &volume,
                format: *format,
                passphrase,
            }),
        };
        let a = match mounter {
            Mounter::Krbd => attach::krbd::attach(&target, &self.node_dir)?,
            Mounter::Nbd => attach::nbd::attach(&target, &self.node_dir)?,
            Mounter::Fuse | Mounter::Auto => {
                let exe = std::env::current_exe()
                    .map_err(|e| Error::internal("finding the haina binary", e))?;
                attach::fuse::attach(&target, &self.fuse_paths(id), &exe)?
            }
        };
        Ok(a)
    }

    fn attachment(&self, id: &VolumeId) -> Result<Option<Attachment>> {
        self.own(id)?;
        if let Some(a) = attach::fuse::find(&self.fuse_paths(id))? {
            return Ok(Some(a));
        }
        Ok(self.kernel_attachment(id))
    }

    fn owns_device(&self, id: &VolumeId, dev: &haina_sys::blockdev::Device) -> bool {
        use haina_sys::blockdev::Kind as K;
        if self.own(id).is_err() {
            return false;
        }
        match &dev.kind {
            K::Loop { backing, .. } => {
                backing.as_deref() == Some(self.fuse_paths(id).file.as_path())
            }
            K::Rbd {
                pool,
                namespace,
                image,
            } => {
                self.is_home(pool, namespace)
                    && meta::parse_image_name(image).is_some_and(|(kind, object, _)| {
                        kind == Kind::Volume && object == id.object()
                    })
            }
            K::Nbd => self
                .kernel_attachment(id)
                .is_some_and(|a| a.device == dev.path()),
            K::Other => false,
        }
    }

    fn detach(&self, id: &VolumeId) -> Result<()> {
        self.own(id)?;
        attach::fuse::detach(&self.fuse_paths(id))?;
        if let Some(a) = self.kernel_attachment(id) {
            let image = a.backing.rsplit('/').next().unwrap_or_default().to_string();
            match a.mounter {
                "krbd" => attach::krbd::detach(self.rados_pool(), self.namespace(), &image)?,
                _ => attach::nbd::detach(self.rados_pool(), self.namespace(), &image)?,
            }
        }
        Ok(())
    }

    fn data_path_health(&self, id: &VolumeId, att: &Attachment) -> Option<String> {
        // krbd and rbd-nbd are served by the kernel or their own daemon.
        (att.mounter == "fuse")
            .then(|| attach::fuse::health(&self.fuse_paths(id)))
            .flatten()
    }

    fn force_detach(&self, id: &VolumeId) -> Result<()> {
        self.own(id)?;
        attach::fuse::force_detach(&self.fuse_paths(id))?;
        if let Some(a) = self.kernel_attachment(id) {
            let image = a.backing.rsplit('/').next().unwrap_or_default().to_string();
            match a.mounter {
                "krbd" => attach::krbd::detach(self.rados_pool(), self.namespace(), &image)?,
                _ => attach::nbd::detach(self.rados_pool(), self.namespace(), &image)?,
            }
        }
        Ok(())
    }

    fn refresh_size(&self, id: &VolumeId) -> Result<u64> {
        self.own(id)?;
        if let Some(size) = attach::fuse::refresh(&self.fuse_paths(id))? {
            return Ok(size);
        }
        // krbd and rbd-nbd pick up a resize on their own.
        let a = self.kernel_attachment(id).ok_or_else(|| {
            Error::FailedPrecondition(format!("volume {id} is not attached on this node"))
        })?;
        haina_sys::fs::block_device_size(&a.device)
            .map_err(|e| Error::internal(format!("size of {}", a.device.display()), e))
    }
}
