//! Backends ("pools"): where volumes live and how a node reaches them.
//!
//! Every pool kind implements [`Backend`], one file each:
//! - [`local`]: image files in a directory, attached as loop devices;
//! - [`rbd`]: Ceph RBD images, attached on nodes through [`crate::attach`].
//!
//! Methods are blocking; the gRPC layer calls them from `spawn_blocking`
//! while holding the per-volume guard, so a backend never sees two calls for
//! the same volume at once. Every method is idempotent: a retried call after
//! a crash at any point converges on the same result.

pub mod copy;
pub mod local;
pub mod rbd;

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ids::{GroupSnapshotId, PoolName, SnapshotId, VolumeId};
use crate::qos::{Limits, Support};
use crate::volume::{
    Capability, Capacity, ContentSource, GroupSnapshot, Publication, Secrets, Segments, Snapshot,
    Volume,
};

/// What CreateVolume asks a backend for (already validated and sized).
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub id: VolumeId,
    pub name: String,
    pub capacity: u64,
    pub context: std::collections::BTreeMap<String, String>,
    pub source: Option<ContentSource>,
    /// Its QoS limits (mutable parameters), stored with it at create.
    pub qos: Limits,
}

/// What CreateVolumeGroupSnapshot asks a pool for (validated: the members
/// exist, are distinct and are all in this pool).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub id: GroupSnapshotId,
    pub name: String,
    /// (source volume, its member snapshot), sorted by volume ID: the order
    /// in which members are frozen and copied.
    pub members: Vec<(VolumeId, SnapshotId)>,
}

/// A volume attached to this node as a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub device: PathBuf,
    /// `loop`, `fuse`, `krbd` or `nbd`.
    pub mounter: &'static str,
    /// What backs the device: an image file path or `pool/image`.
    pub backing: String,
    /// True when this call created the attachment (so a failed stage undoes it).
    pub newly_attached: bool,
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &PoolName;
    /// `local` or `rbd`.
    fn kind(&self) -> &'static str;
    /// Where volumes of this pool are accessible; `None` means everywhere.
    fn topology(&self) -> Option<Segments>;
    /// Refuses capabilities this pool cannot serve (INVALID_ARGUMENT).
    fn check_capability(&self, cap: &Capability) -> Result<()>;
    /// Is the pool usable right now? (Probe and /healthz.)
    fn health(&self) -> Result<()>;
    /// Facts about the pool added to every new volume's `volume_context`
    /// (so they show in the PV), e.g. a local pool's copy method.
    fn context(&self) -> std::collections::BTreeMap<String, String> {
        Default::default()
    }
    /// Extra facts for logs and `explain` (e.g. the copy method).
    fn describe(&self) -> Vec<(String, String)>;

    // ---- controller
    // Every method that may talk to a remote store takes the request's
    // credentials as an explicit value (empty when the CSI request has no
    // `secrets` field); pools without credentials ignore them. A pool never
    // remembers one request's credentials for another.
    fn create_volume(&self, spec: &CreateSpec, secrets: &Secrets) -> Result<Volume>;
    fn delete_volume(&self, id: &VolumeId, secrets: &Secrets) -> Result<()>;
    fn get_volume(&self, id: &VolumeId, secrets: &Secrets) -> Result<Option<Volume>>;
    /// All volumes, sorted by ID.
    fn list_volumes(&self, secrets: &Secrets) -> Result<Vec<Volume>>;
    fn capacity(&self, secrets: &Secrets) -> Result<Capacity>;
    /// Records (`Some`) or clears (`None`) a node's publication.
    fn set_publication(
        &self,
        id: &VolumeId,
        node: &str,
        publication: Option<Publication>,
        secrets: &Secrets,
    ) -> Result<Volume>;
    /// Whether `node_id` may receive a publication of this pool's volumes:
    /// NOT_FOUND for a node the pool does not know, FAILED_PRECONDITION for
    /// one that is known to be down; `Ok` when the pool cannot tell (a pool
    /// without a node registry). Called by ControllerPublishVolume before
    /// it records a new publication, with the request's credentials.
    fn check_publish_node(&self, _node_id: &str, _secrets: &Secrets) -> Result<()> {
        Ok(())
    }
    /// Grows the volume to `size` bytes; returns the new size.
    fn expand_volume(&self, id: &VolumeId, size: u64, secrets: &Secrets) -> Result<u64>;
    /// Whether this pool enforces the QoS mutable parameters ([`crate::qos`]);
    /// if not, why (it then refuses them with INVALID_ARGUMENT).
    fn qos_support(&self) -> Support {
        Support::No(format!("{} pools do not enforce QoS limits", self.kind()))
    }
    /// Stores the volume's QoS limits with it and applies them to its live
    /// attachments (ControllerModifyVolume). Idempotent; NOT_FOUND for a
    /// volume that does not exist. Called only when [`Backend::qos_support`]
    /// says yes.
    fn set_qos(&self, id: &VolumeId, _limits: Limits, _secrets: &Secrets) -> Result<()> {
        Err(crate::error::Error::Unimplemented(format!(
            "pool {} cannot change the QoS limits of volume {id}",
            self.name()
        )))
    }
    fn create_snapshot(
        &self,
        id: &SnapshotId,
        name: &str,
        source: &VolumeId,
        secrets: &Secrets,
    ) -> Result<Snapshot>;
    fn delete_snapshot(&self, id: &SnapshotId, secrets: &Secrets) -> Result<()>;
    fn get_snapshot(&self, id: &SnapshotId, secrets: &Secrets) -> Result<Option<Snapshot>>;
    /// All snapshots, sorted by ID. Members of a group snapshot are
    /// listed (and found by `get_snapshot`) only once their group is
    /// complete, and carry its ID.
    fn list_snapshots(&self, secrets: &Secrets) -> Result<Vec<Snapshot>>;

    // ---- group snapshots
    /// Snapshots every member volume at one point in time, write-order
    /// consistent across members (a write that completed before another
    /// began is never missing while the later one is present), all or
    /// none: on an error nothing is left. A retry after a crash at any
    /// point finishes or starts over, and no member is visible before the
    /// whole group is. The same ID with another member set is
    /// ALREADY_EXISTS; members that cannot be paused together are
    /// FAILED_PRECONDITION.
    fn create_group_snapshot(
        &self,
        _spec: &GroupSpec,
        _secrets: &Secrets,
    ) -> Result<GroupSnapshot> {
        Err(Error::Unimplemented(format!(
            "pool {} ({}) does not support group snapshots",
            self.name(),
            self.kind()
        )))
    }
    /// Deletes a group snapshot with every member snapshot, or whatever a
    /// crashed create or delete left of it. Nothing there is success.
    fn delete_group_snapshot(&self, _id: &GroupSnapshotId, _secrets: &Secrets) -> Result<()> {
        Ok(())
    }
    /// A complete group snapshot with its members.
    fn get_group_snapshot(
        &self,
        _id: &GroupSnapshotId,
        _secrets: &Secrets,
    ) -> Result<Option<GroupSnapshot>> {
        Ok(None)
    }

    // ---- node
    /// Announces this process as the pool's node plugin for as long as it
    /// serves (an RBD pool's node registry: register, then heartbeat on a
    /// thread of its own). `None` when the pool keeps no registry; an error
    /// when the config demands one this plugin cannot keep. Called once by
    /// `serve` with the node service, never by the tools.
    fn announce_node(&self) -> Result<Option<Box<dyn Presence>>> {
        Ok(None)
    }
    /// Attaches the volume to this node (or finds the existing attachment).
    fn attach(&self, id: &VolumeId, secrets: &Secrets) -> Result<Attachment>;
    /// The existing attachment, from the kernel's view, if any.
    fn attachment(&self, id: &VolumeId) -> Result<Option<Attachment>>;
    fn detach(&self, id: &VolumeId) -> Result<()>;
    /// Whether the kernel's block device `dev` is this volume's attachment:
    /// a loop device over its image (even one deleted behind the driver's
    /// back), or its krbd/nbd mapping. Unmount and detach act only on
    /// devices for which this holds. Must not touch the device's data path.
    fn owns_device(&self, id: &VolumeId, dev: &haina_sys::blockdev::Device) -> bool;
    /// The health of the volume's data path on this node: `None` when I/O
    /// can flow, else what is wrong (a dead or stopped FUSE server, an image
    /// deleted behind the driver's back). Bounded in time: a stalled data
    /// path is reported, never waited on.
    fn data_path_health(&self, _id: &VolumeId, _att: &Attachment) -> Option<String> {
        None
    }
    /// Called by unstage right before the volume's mounts on this node are
    /// taken down: drops per-device state that must not outlive the
    /// attachment — a loop device's I/O limits, which the kernel keeps per
    /// device number while numbers are reused (and a filesystem volume's
    /// loop device detaches itself with its last mount, before `detach`
    /// could find it). Idempotent; `attach` restores what it dropped.
    fn release(&self, _id: &VolumeId) -> Result<()> {
        Ok(())
    }
    /// Tears down an attachment whose data path is dead or stalled, without
    /// waiting on it (e.g. aborting a FUSE connection so that stuck I/O
    /// fails). Called by unstage only after a regular unstage stalled or the
    /// data path was found dead; data not yet written is lost, which is why
    /// it is never the first resort.
    fn force_detach(&self, id: &VolumeId) -> Result<()> {
        self.detach(id)
    }
    /// Every volume of this pool attached on this node (for metrics and `explain`).
    fn attachments(&self) -> Result<Vec<(VolumeId, Attachment)>> {
        Ok(Vec::new())
    }
    /// True only when the backend can prove the volume holds nothing but
    /// zeros (e.g. an image file without a single data extent), which lets
    /// stage skip the blkid probe. `false` means "probe it".
    fn is_blank(&self, _id: &VolumeId) -> Result<bool> {
        Ok(false)
    }
    /// Makes an attached device see a grown image; returns the device size.
    fn refresh_size(&self, id: &VolumeId) -> Result<u64>;
}

pub type SharedBackend = Arc<dyn Backend>;

/// A node plugin's presence in a pool, kept up in the background while it
/// serves (see [`Backend::announce_node`]).
pub trait Presence: Send {
    /// Waits until the first registration attempt finished (successfully or
    /// not), but not past `deadline`; whether it finished.
    fn wait_registered(&self, deadline: std::time::Instant) -> bool;
    /// Ends the presence; a graceful stop records it, waiting at most
    /// `within` (a hung cluster must not hold up the shutdown).
    fn stop(self: Box<Self>, within: std::time::Duration);
}
