//! Controller operations: the CSI Controller service's logic, over typed
//! arguments. The gRPC layer parses requests into these arguments and maps
//! the results back; all decisions (sizes, conflicts, topology, paging) are
//! made here, and the pools do the storage work.

use std::collections::BTreeMap;

use haina_sys::fs::FsType;

use crate::backend::rbd::crypt;
use crate::backend::{Backend, CreateSpec, SharedBackend};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::fsopts;
use crate::ids::{ObjectId, Parsed, SnapshotId, VolumeId, echo};
use crate::limiter::Guard;
use crate::qos::{self, Limits};
use crate::volume::{
    AccessType, Capability, Capacity, ContentSource, Publication, Secrets, Segments, Snapshot,
    TOPOLOGY_NODE_KEY, Volume, XFS_MIN, fits_range, size_for_range, topology_matches,
};

/// StorageClass / VolumeSnapshotClass parameters haina understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub pool: Option<String>,
    pub fs_type: Option<FsType>,
    pub mkfs_options: Option<String>,
    pub mount_options: Option<String>,
    /// `encrypted: "true"`: the format of its encryption at rest (RBD pools
    /// only; see backend/rbd/crypt.rs).
    pub encryption: Option<haina_rbd::EncryptionFormat>,
    /// QoS defaults for the volume (mutable parameters override them).
    pub qos: qos::Update,
}

/// Keys Kubernetes' sidecars add on their own; accepted and ignored.
const K8S_PREFIX: &str = "csi.storage.k8s.io/";

impl Params {
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut p = Self::default();
        for (k, v) in map {
            if p.qos.take_param("parameters", k, v)? {
                continue;
            }
            match k.as_str() {
                "pool" => p.pool = Some(v.clone()),
                "fsType" | "csi.storage.k8s.io/fstype" => {
                    p.fs_type = Some(parse_fs(&format!("parameters.{k}"), v)?);
                }
                "mkfsOptions" => p.mkfs_options = Some(v.clone()),
                "mountOptions" => p.mount_options = Some(v.clone()),
                crypt::PARAM_ENCRYPTED | crypt::PARAM_FORMAT => {}
                _ if k.starts_with(K8S_PREFIX) => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "parameters: unknown key {} (known: pool, fsType, mkfsOptions, \
                         mountOptions, encrypted, encryptionFormat, qos{{Read,Write}}{{Iops,Bps}})",
                        echo(k)
                    )));
                }
            }
        }
        p.encryption = Self::parse_encryption(map)?;
        p.check_options(p.fs_type.unwrap_or(FsType::Ext4))?;
        Ok(p)
    }

    /// Checks `mkfsOptions` and `mountOptions` against `fs`'s allow-lists
    /// ([`fsopts`]): nothing a request carries reaches a tool unchecked.
    pub fn check_options(&self, fs: FsType) -> Result<()> {
        if let Some(o) = &self.mkfs_options {
            fsopts::mkfs_args(fs, "parameters.mkfsOptions", o)?;
        }
        if let Some(o) = &self.mount_options {
            fsopts::mount_options(fs, "parameters.mountOptions", &[o])?;
        }
        Ok(())
    }

    /// `encrypted` ("true"/"false") and `encryptionFormat` (luks1/luks2,
    /// only with `encrypted: "true"`, default luks2).
    fn parse_encryption(
        map: &BTreeMap<String, String>,
    ) -> Result<Option<haina_rbd::EncryptionFormat>> {
        let (enc, fmt) = (crypt::PARAM_ENCRYPTED, crypt::PARAM_FORMAT);
        let encrypted = match map.get(enc).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "parameters.{enc}: {other:?} is not \"true\" or \"false\""
                )));
            }
        };
        let format = map
            .get(fmt)
            .map(|f| f.parse::<haina_rbd::EncryptionFormat>())
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("parameters.{fmt}: {e}")))?;
        match (encrypted, format) {
            (true, f) => Ok(Some(f.unwrap_or(crypt::DEFAULT_FORMAT))),
            (false, None) => Ok(None),
            // Never a plain volume for a class that meant to encrypt.
            (false, Some(_)) => Err(Error::InvalidArgument(format!(
                "parameters.{fmt} is set but parameters.{enc} is not \"true\"; set \
                 {enc}: \"true\" to encrypt (or drop {fmt})"
            ))),
        }
    }

    /// What the node needs back at stage time.
    fn context(&self, pool: &str) -> BTreeMap<String, String> {
        let mut c = BTreeMap::from([("pool".to_string(), pool.to_string())]);
        if let Some(fs) = self.fs_type {
            c.insert("fsType".into(), fs.as_str().into());
        }
        if let Some(o) = &self.mkfs_options {
            c.insert("mkfsOptions".into(), o.clone());
        }
        if let Some(o) = &self.mount_options {
            c.insert("mountOptions".into(), o.clone());
        }
        if let Some(f) = self.encryption {
            c.insert(crypt::PARAM_ENCRYPTED.into(), "true".into());
            c.insert(crypt::PARAM_FORMAT.into(), f.as_str().into());
        }
        c
    }
}

/// A filesystem type from a request; the error names `field` and echoes a
/// bounded prefix of the value.
fn parse_fs(field: &str, raw: &str) -> Result<FsType> {
    raw.parse::<FsType>().map_err(|_| {
        Error::InvalidArgument(format!(
            "{field}: unsupported filesystem type {} (supported: ext4, xfs)",
            echo(raw)
        ))
    })
}

/// The filesystem a mount capability gets: its own `fs_type`, else
/// `default` (the `fsType` parameter or volume context), else ext4. `None`
/// for a block capability.
fn mount_fs(field: &str, cap: &Capability, default: Option<FsType>) -> Result<Option<FsType>> {
    match &cap.access {
        AccessType::Block => Ok(None),
        AccessType::Mount { fs_type, .. } if fs_type.is_empty() => {
            Ok(Some(default.unwrap_or(FsType::Ext4)))
        }
        AccessType::Mount { fs_type, .. } => {
            parse_fs(&format!("{field}.mount.fs_type"), fs_type).map(Some)
        }
    }
}

/// Checks capabilities against a pool: supported modes and filesystems, and
/// mount flags from the filesystem's allow-list ([`fsopts`]). `default_fs`
/// is the filesystem a capability without `fs_type` gets.
pub fn check_capabilities(
    backend: &dyn Backend,
    caps: &[Capability],
    default_fs: Option<FsType>,
) -> Result<()> {
    for (i, cap) in caps.iter().enumerate() {
        let field = format!("volume_capabilities[{i}]");
        backend
            .check_capability(cap)
            .map_err(|e| e.context(&field))?;
        if let (Some(fs), AccessType::Mount { mount_flags, .. }) =
            (mount_fs(&field, cap, default_fs)?, &cap.access)
        {
            fsopts::mount_options(fs, &format!("{field}.mount.mount_flags"), mount_flags)?;
        }
    }
    Ok(())
}

/// Checks capabilities and parameters together: the parameters' mkfs and
/// mount options must suit the filesystem of every mount capability.
fn check_request(backend: &dyn Backend, caps: &[Capability], params: &Params) -> Result<()> {
    check_capabilities(backend, caps, params.fs_type)?;
    let checked = params.fs_type.unwrap_or(FsType::Ext4);
    for (i, cap) in caps.iter().enumerate() {
        if let Some(fs) = mount_fs(&format!("volume_capabilities[{i}]"), cap, params.fs_type)?
            && fs != checked
        {
            params
                .check_options(fs)
                .map_err(|e| e.context(format!("with volume_capabilities[{i}]'s {fs}")))?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct TopologyRequirement {
    pub requisite: Vec<Segments>,
    pub preferred: Vec<Segments>,
}

pub struct CreateRequest {
    pub name: String,
    pub required_bytes: i64,
    pub limit_bytes: i64,
    pub capabilities: Vec<Capability>,
    pub parameters: BTreeMap<String, String>,
    pub source: Option<ContentSource>,
    pub topology: Option<TopologyRequirement>,
    pub mutable_parameters: BTreeMap<String, String>,
}

/// The QoS limits a request asks for: `parameters` defaults, overridden
/// key by key by `mutable_parameters`; refused (naming the field and key)
/// when the pool cannot enforce them.
fn requested_limits(
    backend: &dyn Backend,
    params: &Params,
    mutable: &qos::Update,
) -> Result<Limits> {
    let support = backend.qos_support();
    let pool = backend.name().as_str();
    mutable.check_supported("mutable_parameters", pool, &support)?;
    params.qos.check_supported("parameters", pool, &support)?;
    Ok(params
        .qos
        .overridden_by(mutable)
        .apply_to(Limits::default()))
}

pub fn create_volume(d: &Driver, req: CreateRequest, secrets: &Secrets) -> Result<Volume> {
    if req.name.is_empty() {
        return Err(Error::InvalidArgument("name is required".into()));
    }
    if req.capabilities.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    let params = Params::parse(&req.parameters)?;
    let mutable = qos::Update::parse_mutable("mutable_parameters", &req.mutable_parameters)?;
    let backend = d.pool_named(params.pool.as_deref())?;
    check_request(backend.as_ref(), &req.capabilities, &params)?;
    if params.encryption.is_some() && backend.kind() != "rbd" {
        return Err(Error::InvalidArgument(format!(
            "parameters.{}: pool {} is a {} pool, which cannot encrypt: encryption at rest is \
             librbd's LUKS encryption (RBD pools), and encrypting an image file would need \
             dm-crypt, which haina does not use; use an rbd pool",
            crypt::PARAM_ENCRYPTED,
            backend.name(),
            backend.kind()
        )));
    }
    let limits = requested_limits(backend.as_ref(), &params, &mutable)?;

    if let (Some(t), Some(ours)) = (&req.topology, backend.topology())
        && !t.requisite.is_empty()
        && !t.requisite.iter().any(|r| topology_matches(r, &ours))
    {
        return Err(Error::ResourceExhausted(format!(
            "accessibility_requirements: pool {} is only accessible at {ours:?}, which no requisite topology allows",
            backend.name()
        )));
    }

    let id = VolumeId::for_name(backend.name(), &req.name);
    let _guard = d.limiter.volume(&id)?;

    let wants_xfs = params.fs_type == Some(FsType::Xfs)
        || req
            .capabilities
            .iter()
            .any(|c| matches!(&c.access, AccessType::Mount { fs_type, .. } if fs_type == "xfs"));
    let mut minimum = if wants_xfs { XFS_MIN } else { 0 };
    if let Some(src) = &req.source {
        let src_size = source_size(d, src, secrets)?;
        if req.limit_bytes > 0 && (req.limit_bytes as u64) < src_size {
            return Err(Error::OutOfRange(format!(
                "capacity_range.limit_bytes {} is smaller than the source's {src_size} bytes",
                req.limit_bytes
            )));
        }
        minimum = minimum.max(src_size);
    }
    let (required, limit) = match (&req.source, req.required_bytes, req.limit_bytes) {
        // Restoring without a size: exactly the source's size.
        (Some(_), 0, 0) => (minimum as i64, 0),
        _ => (req.required_bytes, req.limit_bytes),
    };
    let capacity = size_for_range(required, limit, minimum)?;
    let mut context = params.context(backend.name().as_str());
    context.extend(backend.context());
    if params.encryption.is_some() && req.source.is_some() {
        // An encrypted restore or clone is a full copy (backend/rbd/crypt.rs).
        context.insert(crypt::CONTEXT_COPY_METHOD.into(), "full".into());
    }
    if let Some(node) = backend
        .topology()
        .and_then(|t| t.get(TOPOLOGY_NODE_KEY).cloned())
    {
        // A node-local volume says where it lives, so that a controller on
        // another node (per-node provisioning) can still answer publish.
        context.insert(LOCAL_NODE_KEY.into(), node);
    }

    if let Some(existing) = backend.get_volume(&id, secrets)? {
        let compatible = existing.name == req.name
            && fits_range(existing.capacity, req.required_bytes, req.limit_bytes)
            && existing.source == req.source
            && existing.context == context;
        if !compatible {
            return Err(Error::AlreadyExists(format!(
                "a volume named {} already exists ({id}, {} bytes) with different capacity, source or parameters",
                echo(&req.name),
                existing.capacity
            )));
        }
        // The spec counts mutable parameters in: the same name with other
        // limits is another volume (ControllerModifyVolume changes them).
        if existing.qos != limits {
            return Err(Error::AlreadyExists(format!(
                "a volume named {} already exists ({id}) with different mutable parameters: it \
                 has {}, the request asks for {limits}",
                echo(&req.name),
                existing.qos
            )));
        }
        return Ok(existing);
    }
    let spec = CreateSpec {
        id,
        name: req.name,
        capacity,
        context,
        source: req.source,
        qos: limits,
    };
    backend.create_volume(&spec, secrets)
}

/// ControllerModifyVolume: validates every key and value first, then
/// changes only the limits the request names, stored with the volume and
/// applied to it live. Idempotent; an empty map changes nothing.
pub fn modify_volume(
    d: &Driver,
    raw_id: &str,
    mutable: &BTreeMap<String, String>,
    secrets: &Secrets,
) -> Result<()> {
    if raw_id.is_empty() {
        return Err(Error::InvalidArgument("volume_id is required".into()));
    }
    let update = qos::Update::parse_mutable("mutable_parameters", mutable)?;
    let id = VolumeId::parse_existing("volume_id", raw_id)?;
    let _guard = d.limiter.volume(&id)?;
    let (_, backend, vol) = existing_volume(d, "volume_id", raw_id, secrets)?;
    update.check_supported(
        "mutable_parameters",
        backend.name().as_str(),
        &backend.qos_support(),
    )?;
    if update.is_empty() {
        return Ok(());
    }
    let limits = update.apply_to(vol.qos);
    if limits != vol.qos {
        tracing::info!(volume = %id, from = %vol.qos, to = %limits, "modifying QoS limits");
    }
    // Also when unchanged: a retry after a crash re-applies them live.
    backend.set_qos(&id, limits, secrets)
}

fn source_size(d: &Driver, src: &ContentSource, secrets: &Secrets) -> Result<u64> {
    match src {
        ContentSource::Snapshot(raw) => {
            let field = "volume_content_source.snapshot.snapshot_id";
            let id = SnapshotId::parse_existing(field, raw)?;
            let snap = d.pool_of(&id)?.get_snapshot(&id, secrets)?;
            snap.map(|s| s.size)
                .ok_or_else(|| Error::NotFound(format!("{field} {} does not exist", echo(raw))))
        }
        ContentSource::Volume(raw) => {
            let field = "volume_content_source.volume.volume_id";
            let id = VolumeId::parse_existing(field, raw)?;
            let vol = d.pool_of(&id)?.get_volume(&id, secrets)?;
            vol.map(|v| v.capacity)
                .ok_or_else(|| Error::NotFound(format!("{field} {} does not exist", echo(raw))))
        }
    }
}

/// The object a delete-style call names, with its pool and guard; `None`
/// when the ID names nothing here (a delete of nothing is a success).
fn claim_for_delete<'d>(
    d: &'d Driver,
    field: &str,
    raw_id: &str,
) -> Result<Option<(ObjectId, &'d SharedBackend, Guard)>> {
    let Parsed::Ours(id) = ObjectId::parse(field, raw_id)? else {
        return Ok(None);
    };
    let Ok(backend) = d.pool_of(&id) else {
        return Ok(None);
    };
    let guard = if field.starts_with("snapshot") {
        d.limiter.snapshot(&id)?
    } else {
        d.limiter.volume(&id)?
    };
    Ok(Some((id, backend, guard)))
}

pub fn delete_volume(d: &Driver, raw_id: &str, secrets: &Secrets) -> Result<()> {
    match claim_for_delete(d, "volume_id", raw_id)? {
        Some((id, backend, _guard)) => backend.delete_volume(&id, secrets),
        None => Ok(()),
    }
}

/// Looks up an existing volume: `NOT_FOUND` for anything that names none.
pub fn existing_volume<'d>(
    d: &'d Driver,
    field: &str,
    raw_id: &str,
    secrets: &Secrets,
) -> Result<(VolumeId, &'d crate::backend::SharedBackend, Volume)> {
    let id = VolumeId::parse_existing(field, raw_id)?;
    let backend = d.pool_of(&id)?;
    let vol = backend
        .get_volume(&id, secrets)?
        .ok_or_else(|| Error::NotFound(format!("{field} {} does not exist", echo(raw_id))))?;
    Ok((id, backend, vol))
}

/// What to do about a publish request, given who has the volume now.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishDecision {
    AlreadyPublished,
    Publish,
}

pub fn decide_publish(
    current: &BTreeMap<String, Publication>,
    node: &str,
    wanted: &Publication,
) -> Result<PublishDecision> {
    if let Some(p) = current.get(node) {
        if p == wanted {
            return Ok(PublishDecision::AlreadyPublished);
        }
        return Err(Error::AlreadyExists(format!(
            "volume is already published to node {node} with a different capability or readonly flag"
        )));
    }
    let single = |m: crate::volume::AccessMode| !m.is_multi_node();
    if let Some((other, p)) = current
        .iter()
        .find(|(n, p)| n.as_str() != node && (single(p.mode) || single(wanted.mode)))
    {
        return Err(Error::FailedPrecondition(format!(
            "volume is published to node {other} with access mode {}; unpublish it there first",
            p.mode.name()
        )));
    }
    Ok(PublishDecision::Publish)
}

pub struct PublishRequest {
    pub volume_id: String,
    pub node_id: String,
    pub capability: Capability,
    pub readonly: bool,
    pub volume_context: BTreeMap<String, String>,
}

/// `volume_context` key naming the node a local-pool volume lives on.
pub const LOCAL_NODE_KEY: &str = "localNode";

pub fn publish_volume(
    d: &Driver,
    req: PublishRequest,
    secrets: &Secrets,
) -> Result<BTreeMap<String, String>> {
    let id = VolumeId::parse_existing("volume_id", &req.volume_id)?;
    let _guard = d.limiter.volume(&id)?;
    let backend = d.pool_of(&id)?;
    let owner = req.volume_context.get(LOCAL_NODE_KEY);
    if let Some(owner) = owner.filter(|o| backend.kind() == "local" && **o != d.node_id) {
        // A local volume of another node's pool (per-node provisioning): that
        // node alone can reach it, and its own records are authoritative.
        if *owner != req.node_id {
            return Err(Error::NotFound(format!(
                "node_id {} cannot reach volume {id}: it lives in a local pool on node {}",
                echo(&req.node_id),
                echo(owner)
            )));
        }
        return Ok(BTreeMap::from([
            ("pool".to_string(), backend.name().to_string()),
            ("readonly".to_string(), req.readonly.to_string()),
        ]));
    }
    let (_, backend, vol) = existing_volume(d, "volume_id", &req.volume_id, secrets)?;
    if let Some(t) = backend.topology() {
        let node = t.get(crate::volume::TOPOLOGY_NODE_KEY);
        if node.is_some_and(|n| n != &req.node_id) {
            return Err(Error::NotFound(format!(
                "node_id {} cannot reach volume {id}: local pool {} lives on node {}",
                echo(&req.node_id),
                backend.name(),
                node.map(String::as_str).unwrap_or("?")
            )));
        }
    }
    let default_fs = vol
        .context
        .get("fsType")
        .map(|f| parse_fs("volume_context.fsType", f))
        .transpose()?;
    check_capabilities(
        backend.as_ref(),
        std::slice::from_ref(&req.capability),
        default_fs,
    )?;
    let wanted = Publication {
        readonly: req.readonly,
        mode: req.capability.mode,
        block: req.capability.is_block(),
    };
    if decide_publish(&vol.publications, &req.node_id, &wanted)? == PublishDecision::Publish {
        // A new publication needs a node that exists and is alive; an
        // existing one is the state the CO asks for, whatever the node does.
        backend.check_publish_node(&req.node_id, secrets)?;
        backend.set_publication(&id, &req.node_id, Some(wanted), secrets)?;
    }
    Ok(BTreeMap::from([
        ("pool".to_string(), backend.name().to_string()),
        ("readonly".to_string(), req.readonly.to_string()),
    ]))
}

pub fn unpublish_volume(d: &Driver, raw_id: &str, node_id: &str, secrets: &Secrets) -> Result<()> {
    // Unpublishing what is not there (an unknown or deleted volume, a node
    // that never had it) is success: the CO's goal state already holds.
    let Some((id, backend, _guard)) = claim_for_delete(d, "volume_id", raw_id)? else {
        return Ok(());
    };
    let Some(vol) = backend.get_volume(&id, secrets)? else {
        return Ok(());
    };
    let nodes: Vec<String> = if node_id.is_empty() {
        vol.publications.keys().cloned().collect()
    } else {
        vol.publications
            .keys()
            .filter(|n| *n == node_id)
            .cloned()
            .collect()
    };
    for n in nodes {
        backend.set_publication(&id, &n, None, secrets)?;
    }
    Ok(())
}

/// ValidateVolumeCapabilities: `Ok(true)` when every capability is supported.
pub fn validate_capabilities(
    d: &Driver,
    raw_id: &str,
    caps: &[Capability],
    params: &BTreeMap<String, String>,
    mutable: &BTreeMap<String, String>,
    secrets: &Secrets,
) -> Result<std::result::Result<(), String>> {
    let (_, backend, vol) = existing_volume(d, "volume_id", raw_id, secrets)?;
    if caps.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    let mut params = match Params::parse(params) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // Mutable parameters are confirmed only when this volume's pool would
    // take them (valid keys and values, limits it can enforce).
    if let Err(e) = qos::Update::parse_mutable("mutable_parameters", mutable)
        .and_then(|m| requested_limits(backend.as_ref(), &params, &m))
    {
        return Ok(Err(e.to_string()));
    }
    // The volume's own filesystem is what a capability without one gets.
    if params.fs_type.is_none()
        && let Some(f) = vol.context.get("fsType")
    {
        params.fs_type = f.parse().ok();
    }
    Ok(check_request(backend.as_ref(), caps, &params).map_err(|e| e.to_string()))
}

/// One page of a sorted list. The token is the ID of the next entry, so a
/// page stays correct when entries before it are deleted between calls.
pub fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    max_entries: i32,
    token: &str,
) -> Result<(Vec<T>, String)> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument(format!(
            "max_entries {max_entries} is negative"
        )));
    }
    let start = if token.is_empty() {
        0
    } else {
        match ObjectId::parse("starting_token", token) {
            Ok(Parsed::Ours(_)) => items
                .iter()
                .position(|t| id(t) >= token)
                .unwrap_or(items.len()),
            _ => {
                return Err(Error::Aborted(format!(
                    "starting_token {} is not a token haina issued",
                    echo(token)
                )));
            }
        }
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let max = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let next = if rest.len() > max {
        id(&rest[max]).to_string()
    } else {
        String::new()
    };
    rest.truncate(max);
    Ok((rest, next))
}

pub fn list_volumes(
    d: &Driver,
    max_entries: i32,
    token: &str,
    secrets: &Secrets,
) -> Result<(Vec<Volume>, String)> {
    let mut all = Vec::new();
    for backend in d.pools.values() {
        all.extend(backend.list_volumes(secrets)?);
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    page(all, |v| v.id.as_str(), max_entries, token)
}

pub fn get_capacity(
    d: &Driver,
    caps: &[Capability],
    params: &BTreeMap<String, String>,
    topology: Option<&Segments>,
    secrets: &Secrets,
) -> Result<Capacity> {
    let p = Params::parse(params)?;
    let backend = d.pool_named(p.pool.as_deref())?;
    let none = Capacity {
        available: 0,
        maximum_volume_size: Some(0),
    };
    if check_request(backend.as_ref(), caps, &p).is_err()
        || requested_limits(backend.as_ref(), &p, &qos::Update::default()).is_err()
    {
        return Ok(none);
    }
    if let (Some(t), Some(ours)) = (topology, backend.topology())
        && !topology_matches(t, &ours)
    {
        return Ok(none);
    }
    let c = backend.capacity(secrets)?;
    // What CreateVolume would accept: an xfs volume needs XFS_MIN at least.
    let wants_xfs = p.fs_type == Some(FsType::Xfs)
        || caps
            .iter()
            .any(|c| matches!(&c.access, AccessType::Mount { fs_type, .. } if fs_type == "xfs"));
    if wants_xfs && c.maximum_volume_size.is_some_and(|m| m < XFS_MIN) {
        return Ok(none);
    }
    Ok(c)
}

pub fn expand_volume(
    d: &Driver,
    raw_id: &str,
    required: i64,
    limit: i64,
    cap: Option<&Capability>,
    secrets: &Secrets,
) -> Result<(u64, bool)> {
    let id = VolumeId::parse_existing("volume_id", raw_id)?;
    let _guard = d.limiter.volume(&id)?;
    let (_, backend, vol) = existing_volume(d, "volume_id", raw_id, secrets)?;
    if required <= 0 && limit <= 0 {
        return Err(Error::InvalidArgument("capacity_range is required".into()));
    }
    let size = size_for_range(required, limit, 0)?;
    if size < vol.capacity && (limit > 0 && (limit as u64) < vol.capacity) {
        return Err(Error::OutOfRange(format!(
            "volume {id} is {} bytes; shrinking to {limit} is not supported",
            vol.capacity
        )));
    }
    let size = size.max(vol.capacity);
    let capacity = backend.expand_volume(&id, size, secrets)?;
    // A block volume needs no node step: the device already shows the size.
    let node_required = !cap.is_some_and(Capability::is_block);
    Ok((capacity, node_required))
}

pub fn create_snapshot(
    d: &Driver,
    name: &str,
    raw_source: &str,
    params: &BTreeMap<String, String>,
    secrets: &Secrets,
) -> Result<Snapshot> {
    crate::group::check_name("name", name)?;
    let source = match ObjectId::parse("source_volume_id", raw_source)? {
        Parsed::Ours(id) => id,
        Parsed::Foreign => {
            return Err(Error::NotFound(format!(
                "source_volume_id {} does not exist",
                echo(raw_source)
            )));
        }
    };
    for k in params.keys() {
        if !k.starts_with(K8S_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "parameters: unknown key {}",
                echo(k)
            )));
        }
    }
    // A name is unique across pools: the same name for another source is a
    // conflict. The source's own pool must answer; another pool that these
    // secrets cannot open (another Ceph cluster) cannot hold it under them.
    for backend in d.pools.values() {
        let other = SnapshotId::for_name(backend.name(), name);
        let found = match backend.get_snapshot(&other, secrets) {
            Ok(s) => s,
            Err(e) if backend.name() == source.pool() => return Err(e),
            Err(e) => {
                tracing::debug!(pool = %backend.name(), error = %e,
                    "snapshot name check skipped a pool these secrets cannot read");
                None
            }
        };
        if let Some(s) = found
            && s.source_volume_id != raw_source
        {
            return Err(Error::AlreadyExists(format!(
                "snapshot {} already exists for source volume {}",
                echo(name),
                s.source_volume_id
            )));
        }
    }
    let backend = d.pool_of(&source).map_err(|_| {
        Error::NotFound(format!(
            "source_volume_id {} does not exist",
            echo(raw_source)
        ))
    })?;
    let id = SnapshotId::for_name(source.pool(), name);
    let _guard = d.limiter.snapshot(&id)?;
    let _source_guard = d.limiter.volume(&source)?;
    backend.create_snapshot(&id, name, &source, secrets)
}

pub fn delete_snapshot(d: &Driver, raw_id: &str, secrets: &Secrets) -> Result<()> {
    let Some((id, backend, _guard)) = claim_for_delete(d, "snapshot_id", raw_id)? else {
        return Ok(());
    };
    // A member of a group snapshot goes with its group only (the spec's
    // "snapshot is part of a group" row), never leaving the group short.
    if let Some(g) = backend
        .get_snapshot(&id, secrets)?
        .and_then(|s| s.group_snapshot_id)
    {
        return Err(Error::InvalidArgument(format!(
            "snapshot_id {id} is part of group snapshot {g} and cannot be deleted on its own; \
             delete the group with DeleteVolumeGroupSnapshot"
        )));
    }
    backend.delete_snapshot(&id, secrets)
}

pub fn get_snapshot(d: &Driver, raw_id: &str, secrets: &Secrets) -> Result<Snapshot> {
    let id = SnapshotId::parse_existing("snapshot_id", raw_id)?;
    d.pool_of(&id)?
        .get_snapshot(&id, secrets)?
        .ok_or_else(|| Error::NotFound(format!("snapshot_id {} does not exist", echo(raw_id))))
}

pub fn list_snapshots(
    d: &Driver,
    snapshot_id: &str,
    source_volume_id: &str,
    max_entries: i32,
    token: &str,
    secrets: &Secrets,
) -> Result<(Vec<Snapshot>, String)> {
    let mut all = Vec::new();
    if !snapshot_id.is_empty() {
        if let Parsed::Ours(id) = ObjectId::parse("snapshot_id", snapshot_id)?
            && let Ok(b) = d.pool_of(&id)
        {
            all.extend(b.get_snapshot(&id, secrets)?);
        }
    } else {
        for backend in d.pools.values() {
            all.extend(backend.list_snapshots(secrets)?);
        }
    }
    if !source_volume_id.is_empty() {
        all.retain(|s| s.source_volume_id == source_volume_id);
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    page(all, |s| s.id.as_str(), max_entries, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::AccessMode::*;

    fn p(mode: crate::volume::AccessMode) -> Publication {
        Publication {
            readonly: false,
            mode,
            block: false,
        }
    }

    #[test]
    fn publish_table() {
        let none = BTreeMap::new();
        let on_a = BTreeMap::from([("a".to_string(), p(SingleNodeWriter))]);
        let multi_a = BTreeMap::from([("a".to_string(), p(MultiNodeMultiWriter))]);
        assert_eq!(
            decide_publish(&none, "a", &p(SingleNodeWriter)).unwrap(),
            PublishDecision::Publish
        );
        assert_eq!(
            decide_publish(&on_a, "a", &p(SingleNodeWriter)).unwrap(),
            PublishDecision::AlreadyPublished
        );
        assert!(matches!(
            decide_publish(&on_a, "a", &p(SingleNodeReaderOnly)),
            Err(Error::AlreadyExists(_))
        ));
        assert!(
            matches!(decide_publish(&on_a, "b", &p(SingleNodeWriter)), Err(Error::FailedPrecondition(m)) if m.contains("node a"))
        );
        assert!(matches!(
            decide_publish(&multi_a, "b", &p(SingleNodeWriter)),
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(
            decide_publish(&multi_a, "b", &p(MultiNodeMultiWriter)).unwrap(),
            PublishDecision::Publish
        );
    }

    #[test]
    fn params() {
        let m = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = Params::parse(&m(&[
            ("pool", "default"),
            ("fsType", "xfs"),
            ("csi.storage.k8s.io/pvc/name", "x"),
        ]))
        .unwrap();
        assert_eq!(ok.fs_type, Some(FsType::Xfs));
        let e = Params::parse(&m(&[("poool", "x")])).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(msg) if msg.contains("poool")),
            "{e}"
        );
        assert!(Params::parse(&m(&[("fsType", "ntfs")])).is_err());
        // mkfs and mount options are checked against the fsType's allow-list.
        let ok = Params::parse(&m(&[("fsType", "xfs"), ("mkfsOptions", "-b size=4096")])).unwrap();
        assert_eq!(ok.mkfs_options.as_deref(), Some("-b size=4096"));
        for (kv, named) in [
            (
                &[("fsType", "xfs"), ("mkfsOptions", "-l logdev=/dev/sda")][..],
                "logdev",
            ),
            (&[("mkfsOptions", "-b size=4096")][..], "size=4096"),
            (&[("mountOptions", "errors=panic")][..], "errors=panic"),
        ] {
            let e = Params::parse(&m(kv)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(msg) if msg.contains(named)),
                "{kv:?}: {e}"
            );
        }
        let long = "k".repeat(10_000);
        let e = Params::parse(&m(&[(long.as_str(), "v")])).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn encryption_params() {
        use haina_rbd::EncryptionFormat::*;
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let enc = |kv: &[(&str, &str)]| Params::parse(&m(kv)).map(|p| p.encryption);
        assert_eq!(enc(&[]).unwrap(), None);
        assert_eq!(enc(&[("encrypted", "false")]).unwrap(), None);
        assert_eq!(enc(&[("encrypted", "true")]).unwrap(), Some(Luks2));
        assert_eq!(
            enc(&[("encrypted", "true"), ("encryptionFormat", "luks1")]).unwrap(),
            Some(Luks1)
        );
        for (bad, field) in [
            (&[("encrypted", "yes")][..], "parameters.encrypted"),
            (&[("encrypted", "True")][..], "parameters.encrypted"),
            (
                &[("encrypted", "true"), ("encryptionFormat", "aes")][..],
                "parameters.encryptionFormat",
            ),
            (
                &[("encryptionFormat", "luks2")][..],
                "parameters.encryptionFormat",
            ),
            (
                &[("encrypted", "false"), ("encryptionFormat", "luks1")][..],
                "parameters.encryptionFormat",
            ),
        ] {
            let e = enc(bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(msg) if msg.contains(field)),
                "{bad:?}: {e}"
            );
        }
        // The volume context says so (it shows in the PV and ListVolumes).
        let p = Params::parse(&m(&[("encrypted", "true")])).unwrap();
        let c = p.context("ceph");
        assert_eq!(c.get("encrypted").map(String::as_str), Some("true"));
        assert_eq!(c.get("encryptionFormat").map(String::as_str), Some("luks2"));
        let plain = Params::parse(&m(&[("encrypted", "false")])).unwrap();
        assert!(!plain.context("ceph").contains_key("encrypted"));
    }

    #[test]
    fn paging() {
        let items: Vec<String> = ["p.a", "p.b", "p.c", "p.d", "p.e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (pg, next) = page(items.clone(), |s| s, 2, "").unwrap();
        assert_eq!(
            (pg, next.as_str()),
            (vec!["p.a".to_string(), "p.b".into()], "p.c")
        );
        // p.c was deleted between calls: the page starts at what follows.
        let fewer: Vec<String> = items.iter().filter(|s| *s != "p.c").cloned().collect();
        let (pg, next) = page(fewer, |s| s, 2, "p.c").unwrap();
        assert_eq!(
            (pg, next.as_str()),
            (vec!["p.d".to_string(), "p.e".into()], "")
        );
        assert!(matches!(
            page(items.clone(), |s| s, 0, "invalid-token"),
            Err(Error::Aborted(_))
        ));
        assert!(matches!(
            page(items, |s| s, -1, ""),
            Err(Error::InvalidArgument(_))
        ));
    }
}
