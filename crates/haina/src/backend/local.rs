//! The embedded default pool: image files in a directory on this node,
//! attached as loop devices with direct I/O.
//!
//! Layout under the pool's directory (IDs are validated, so every name is a
//! single safe path component):
//!
//! ```text
//! volumes/<object>.img    the volume's bytes (sparse)
//! volumes/<object>.json   its record: name, size, context, publications
//! snapshots/<object>.img  a point-in-time copy (reflink or sparse copy)
//! snapshots/<object>.json
//! ```
//!
//! Crash safety: the image is built under a temp name and renamed into
//! place, then the record is written (atomically): the record is what makes
//! a volume exist. A retry after `kill -9` at any point rebuilds what is
//! missing. A delete removes the record first, then the image, so no reader
//! ever sees a volume without its bytes.
//!
//! Attachments are found from the kernel (`/sys/block/loop*/loop/backing_file`),
//! never from a record, so a restarted node plugin re-adopts its loop devices.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use haina_sys::loopdev::{self, AttachOptions};

use super::copy::{self, CopyMethod};
use super::{Attachment, Backend, CreateSpec};
use crate::error::{Error, Result};
use crate::ids::{PoolName, SnapshotId, VolumeId, echo};
use crate::volume::{
    Capability, Capacity, ContentSource, Publication, Secrets, Segments, Snapshot,
    TOPOLOGY_NODE_KEY, Volume,
};
use crate::{failpoint, state};

pub struct LocalPool {
    name: PoolName,
    root: PathBuf,
    node_id: String,
    direct_io: bool,
    copy: CopyMethod,
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
fn attach_error(image: &Path, e: loopdev::LoopError) -> Error {
    match e {
        loopdev::LoopError::NoDeviceLeft { .. } | loopdev::LoopError::NoFreeDevice { .. } => {
            Error::ResourceExhausted(format!("attaching {}: {e}", image.display()))
        }
        e => Error::internal(format!("attaching {} to a loop device", image.display()), e),
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    Error::internal(format!("{what} {}", path.display()), e)
}

impl LocalPool {
    /// Opens (creating if needed) the pool at `root`, and probes its copy method.
    pub fn open(name: PoolName, root: PathBuf, node_id: String, direct_io: bool) -> Result<Self> {
        for sub in ["volumes", "snapshots"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| io_err("creating pool directory", &d, e))?;
        }
        // Canonical, because the kernel shows loop backing files that way,
        // and ownership checks compare the two as strings.
        let root = fs::canonicalize(&root).map_err(|e| io_err("resolving", &root, e))?;
        let copy =
            CopyMethod::probe(&root).map_err(|e| io_err("probing reflink support in", &root, e))?;
        tracing::info!(pool = %name, root = %root.display(), copy = copy.as_str(), direct_io, "local pool ready");
        Ok(Self {
            name,
            root,
            node_id,
            direct_io,
            copy,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn copy_method(&self) -> CopyMethod {
        self.copy
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

    fn read_volume(&self, id: &VolumeId) -> Result<Option<Volume>> {
        self.own(id)?;
        Ok(state::read(&self.volume_record(id))?)
    }

    /// Builds `dst` from `src` (or empty) under a temp name, sized `len`, then renames it in.
    fn build_image(&self, dst: &Path, src: Option<&Path>, len: u64) -> Result<()> {
        let tmp = dst.with_extension("img.tmp");
        if let Some(src) = src {
            // A mounted source is frozen so the copy is filesystem-consistent.
            let _frozen = match loopdev::find_by_backing_file(src)
                .map_err(|e| Error::internal("looking up loop devices", e))?
                .first()
            {
                Some(dev) => crate::node::freeze_if_mounted(&dev.path())?,
                None => None,
            };
            copy::copy_file(src, &tmp, self.copy).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_err(
                    &format!("copying ({}) {} to", self.copy.as_str(), src.display()),
                    &tmp,
                    e,
                )
            })?;
            failpoint::hit("copy-image").inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })?;
        }
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(src.is_none())
            .open(&tmp)
            .map_err(|e| io_err("creating image", &tmp, e))?;
        if f.metadata().map_err(|e| io_err("stat", &tmp, e))?.len() < len {
            f.set_len(len)
                .map_err(|e| io_err("sizing image", &tmp, e))?;
        }
        f.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
        failpoint::hit("create-image")?;
        fs::rename(&tmp, dst).map_err(|e| io_err("renaming image into place", dst, e))?;
        // The record written next, in the same directory, fsyncs it.
        Ok(())
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
            (self.snapshot_image(&id), self.get_snapshot(&id)?.is_some())
        } else {
            (self.volume_image(&id), self.get_volume(&id)?.is_some())
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

    fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("path".into(), self.root.display().to_string()),
            ("copyMethod".into(), self.copy.as_str().into()),
            ("directIO".into(), self.direct_io.to_string()),
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
        self.build_image(&self.volume_image(&spec.id), src.as_deref(), spec.capacity)?;
        let volume = Volume {
            id: spec.id.to_string(),
            name: spec.name.clone(),
            capacity: spec.capacity,
            context: spec.context.clone(),
            source: spec.source.clone(),
            publications: BTreeMap::new(),
            created: crate::volume::now_unix().0 as u64,
        };
        state::write(&self.volume_record(&spec.id), &volume)?;
        Ok(volume)
    }

    fn delete_volume(&self, id: &VolumeId, _secrets: &Secrets) -> Result<()> {
        self.own(id)?;
        let image = self.volume_image(id);
        let devs = loopdev::find_by_backing_file(&image)
            .map_err(|e| Error::internal("looking up loop devices", e))?;
        if let Some(dev) = devs.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still attached on this node as {}; unstage it first",
                dev.path().display()
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
        Ok(())
    }

    fn get_volume(&self, id: &VolumeId) -> Result<Option<Volume>> {
        self.read_volume(id)
    }

    fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.list_records("volumes")
    }

    fn capacity(&self) -> Result<Capacity> {
        let st =
            rustix::fs::statvfs(&self.root).map_err(|e| io_err("statvfs", &self.root, e.into()))?;
        let available = st.f_bavail * st.f_frsize;
        Ok(Capacity {
            available,
            maximum_volume_size: Some(available),
        })
    }

    fn set_publication(
        &self,
        id: &VolumeId,
        node: &str,
        publication: Option<Publication>,
    ) -> Result<Volume> {
        let mut r = self
            .read_volume(id)?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        match publication {
            Some(p) => r.publications.insert(node.to_string(), p),
            None => r.publications.remove(node),
        };
        state::write(&self.volume_record(id), &r)?;
        Ok(r)
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
            f.set_len(size).map_err(|e| io_err("growing", &image, e))?;
            f.sync_all().map_err(|e| io_err("fsync", &image, e))?;
        }
        if r.capacity < size {
            r.capacity = size;
            state::write(&self.volume_record(id), &r)?;
        }
        // An attached device on this node sees the new size at once.
        for dev in loopdev::find_by_backing_file(&image)
            .map_err(|e| Error::internal("finding loop devices", e))?
        {
            loopdev::refresh_capacity(&dev)
                .map_err(|e| Error::internal("refreshing loop capacity", e))?;
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
        if let Some(s) = self.get_snapshot(id)? {
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
            .get_volume(source)?
            .ok_or_else(|| Error::NotFound(format!("source_volume_id {source} does not exist")))?;
        self.build_image(
            &self.snapshot_image(id),
            Some(&self.volume_image(source)),
            0,
        )?;
        let snap = Snapshot {
            id: id.to_string(),
            name: name.to_string(),
            source_volume_id: source.to_string(),
            size: vol.capacity,
            created: crate::volume::now_unix(),
            ready: true,
        };
        state::write(&self.snapshot_record(id), &snap)?;
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

    fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<Snapshot>> {
        self.own(id)?;
        // The record is written only after the image is in place.
        Ok(state::read(&self.snapshot_record(id))?)
    }

    fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.list_records("snapshots")
    }

    fn attach(&self, id: &VolumeId, _secrets: &Secrets) -> Result<Attachment> {
        self.own(id)?;
        let image = self.volume_image(id);
        if !image.exists() || self.get_volume(id)?.is_none() {
            return Err(Error::NotFound(format!(
                "volume {id} does not exist in pool {}",
                self.name
            )));
        }
        let opts = AttachOptions {
            direct_io: self.direct_io,
            read_only: false,
        };
        let (dev, newly_attached) =
            loopdev::attach_or_find(&image, &opts).map_err(|e| attach_error(&image, e))?;
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
        let devs = loopdev::find_by_backing_file(&image)
            .map_err(|e| Error::internal("looking up loop devices", e))?;
        Ok(devs.first().map(|dev| Attachment {
            device: dev.path(),
            mounter: "loop",
            backing: image.display().to_string(),
            newly_attached: false,
        }))
    }

    fn owns_device(&self, id: &VolumeId, dev: &haina_sys::blockdev::Device) -> bool {
        self.own(id).is_ok() && dev.loop_backing() == Some(self.volume_image(id).as_path())
    }

    fn detach(&self, id: &VolumeId) -> Result<()> {
        self.own(id)?;
        let image = self.volume_image(id);
        for dev in loopdev::find_by_backing_file(&image)
            .map_err(|e| Error::internal("looking up loop devices", e))?
        {
            loopdev::detach(&dev)
                .map_err(|e| Error::internal(format!("detaching {}", dev.path().display()), e))?;
        }
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
        for (dev, backing) in
            loopdev::list().map_err(|e| Error::internal("listing loop devices", e))?
        {
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
        let devs = loopdev::find_by_backing_file(&image)
            .map_err(|e| Error::internal("looking up loop devices", e))?;
        let dev = devs.first().ok_or_else(|| {
            Error::FailedPrecondition(format!("volume {id} is not attached on this node"))
        })?;
        loopdev::refresh_capacity(dev).map_err(|e| Error::internal("refreshing loop capacity", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_loop_devices_is_resource_exhausted() {
        let img = Path::new("/pool/volumes/v.img");
        let e = attach_error(
            img,
            loopdev::LoopError::NoDeviceLeft {
                path: img.into(),
                errno: rustix::io::Errno::NOSPC,
            },
        );
        assert!(
            matches!(&e, Error::ResourceExhausted(m) if m.contains("LOOP_CTL_GET_FREE") && m.contains("v.img")),
            "{e:?}"
        );
        let e = attach_error(
            img,
            loopdev::LoopError::NoFreeDevice {
                path: img.into(),
                attempts: 16,
            },
        );
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let e = attach_error(
            img,
            loopdev::LoopError::Backing {
                path: img.into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            },
        );
        assert_eq!(e.code(), tonic::Code::Internal);
    }
}
