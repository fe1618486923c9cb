//! Domain types shared by the controller, the node and the backends:
//! capabilities, volume and snapshot records, capacity rules, topology.
//!
//! These are plain data, already validated; the gRPC layer builds them from
//! requests and turns them back into responses.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Capacity when the CO gives no range.
pub const DEFAULT_CAPACITY: u64 = GIB;
/// The largest capacity haina hands out: whole MiB that still fit the
/// wire's `int64` (a size rounded up from `i64::MAX` would not).
pub const MAX_CAPACITY: u64 = (i64::MAX as u64) / MIB * MIB;
/// xfsprogs refuses to make filesystems smaller than 300 MB.
pub const XFS_MIN: u64 = 300 * MIB;

/// The topology key haina reports for node-local pools.
pub const TOPOLOGY_NODE_KEY: &str = "topology.haina.dev/node";

/// CSI access modes, by their wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessMode {
    pub fn is_multi_node(self) -> bool {
        matches!(
            self,
            Self::MultiNodeReaderOnly | Self::MultiNodeSingleWriter | Self::MultiNodeMultiWriter
        )
    }

    pub fn is_read_only(self) -> bool {
        matches!(self, Self::SingleNodeReaderOnly | Self::MultiNodeReaderOnly)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SingleNodeWriter => "SINGLE_NODE_WRITER",
            Self::SingleNodeReaderOnly => "SINGLE_NODE_READER_ONLY",
            Self::MultiNodeReaderOnly => "MULTI_NODE_READER_ONLY",
            Self::MultiNodeSingleWriter => "MULTI_NODE_SINGLE_WRITER",
            Self::MultiNodeMultiWriter => "MULTI_NODE_MULTI_WRITER",
            Self::SingleNodeSingleWriter => "SINGLE_NODE_SINGLE_WRITER",
            Self::SingleNodeMultiWriter => "SINGLE_NODE_MULTI_WRITER",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessType {
    Block,
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
}

/// A validated `VolumeCapability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub access: AccessType,
    pub mode: AccessMode,
}

impl Capability {
    pub fn is_block(&self) -> bool {
        matches!(self.access, AccessType::Block)
    }
}

/// Where a new volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// A node's claim on a volume, recorded by ControllerPublishVolume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub readonly: bool,
    pub mode: AccessMode,
    pub block: bool,
}

/// A volume as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub capacity: u64,
    /// Returned to the CO as `volume_context` and handed back to the node.
    pub context: BTreeMap<String, String>,
    pub source: Option<ContentSource>,
    #[serde(default)]
    pub publications: BTreeMap<String, Publication>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Its QoS limits (the mutable parameters), kept with the volume.
    #[serde(default, skip_serializing_if = "crate::qos::Limits::is_unlimited")]
    pub qos: crate::qos::Limits,
}

/// A snapshot as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    pub size: u64,
    /// Seconds and nanoseconds since the epoch.
    pub created: (i64, i32),
    pub ready: bool,
    /// The group snapshot this snapshot is a member of: it is deleted with
    /// its group, never on its own (DeleteSnapshot refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot_id: Option<String>,
}

/// A group snapshot: one snapshot of each member volume, all taken at the
/// same point in time (write-order consistent with each other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub id: String,
    pub name: String,
    /// One per source volume, sorted by source volume ID.
    pub members: Vec<Snapshot>,
    /// The point in time: seconds and nanoseconds since the epoch.
    pub created: (i64, i32),
}

/// Capacity as reported by GetCapacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub available: u64,
    pub maximum_volume_size: Option<u64>,
}

/// The volume size for a `CapacityRange`: `required` rounded up to whole
/// MiB (and to `minimum`), never above `limit`. `0` means "not set".
pub fn size_for_range(required: i64, limit: i64, minimum: u64) -> Result<u64> {
    if required < 0 || limit < 0 {
        return Err(Error::InvalidArgument(format!(
            "capacity_range must not be negative (required_bytes={required}, limit_bytes={limit})"
        )));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && required > limit {
        return Err(Error::InvalidArgument(format!(
            "capacity_range.required_bytes {required} exceeds limit_bytes {limit}"
        )));
    }
    let wanted = if required == 0 && limit == 0 {
        DEFAULT_CAPACITY
    } else {
        required
    };
    let wanted = wanted.max(minimum).max(MIB);
    let Some(size) = wanted
        .div_ceil(MIB)
        .checked_mul(MIB)
        .filter(|s| *s <= MAX_CAPACITY)
    else {
        return Err(Error::OutOfRange(format!(
            "capacity_range: {wanted} bytes rounded up to whole MiB is more than a volume can have ({MAX_CAPACITY} bytes)"
        )));
    };
    if limit > 0 && size > limit {
        // Rounding up overshot the limit; a smaller whole-MiB size may still fit.
        let down = limit / MIB * MIB;
        if down >= required && down >= minimum.max(MIB) {
            return Ok(down);
        }
        return Err(Error::OutOfRange(format!(
            "capacity_range cannot be met: volumes are whole MiB of at least {} bytes, but limit_bytes is {limit}",
            minimum.max(MIB)
        )));
    }
    Ok(size)
}

/// Does `capacity` satisfy a request's range? (For idempotent re-creates.)
pub fn fits_range(capacity: u64, required: i64, limit: i64) -> bool {
    capacity >= required.max(0) as u64 && (limit <= 0 || capacity <= limit as u64)
}

/// A topology segment map, e.g. `{topology.haina.dev/node: node-a}`.
pub type Segments = BTreeMap<String, String>;

/// A requested topology is satisfied by ours when every key it names has the
/// same value in ours.
pub fn topology_matches(requested: &Segments, ours: &Segments) -> bool {
    requested.iter().all(|(k, v)| ours.get(k) == Some(v))
}

/// Secrets from a CSI request. Never printed: `Debug` redacts the values.
#[derive(Clone, Default)]
pub struct Secrets(pub BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

pub fn now_unix() -> (i64, i32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rules() {
        let t = |r, l, m| size_for_range(r, l, m);
        assert_eq!(t(0, 0, 0).unwrap(), GIB);
        assert_eq!(t(1, 0, 0).unwrap(), MIB);
        assert_eq!(t(MIB as i64 + 1, 0, 0).unwrap(), 2 * MIB);
        assert_eq!(t(0, 10 * MIB as i64, 0).unwrap(), MIB);
        assert_eq!(t(1, 0, XFS_MIN).unwrap(), XFS_MIN);
        assert_eq!(t(0, 0, XFS_MIN).unwrap(), GIB);
        // Rounding up would pass the limit, but whole MiB below it still covers required.
        assert_eq!(t(MIB as i64 + 1, 3 * MIB as i64 - 1, 0).unwrap(), 2 * MIB);
        assert!(matches!(
            t(MIB as i64 + 1, MIB as i64 + 2, 0),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            t(0, 100 * MIB as i64, XFS_MIN),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(t(-1, 0, 0), Err(Error::InvalidArgument(_))));
        // Rounding never leaves what int64 can carry.
        assert!(matches!(t(i64::MAX, 0, 0), Err(Error::OutOfRange(_))));
        assert_eq!(t(MAX_CAPACITY as i64, 0, 0).unwrap(), MAX_CAPACITY);
        assert!(matches!(
            t(MAX_CAPACITY as i64 + 1, 0, 0),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(t(0, 0, u64::MAX), Err(Error::OutOfRange(_))));
        assert_eq!(t(1 << 60, 0, 0).unwrap(), 1 << 60);
        assert!(matches!(t(10, 5, 0), Err(Error::InvalidArgument(_))));
        assert!(fits_range(GIB, GIB as i64, 0));
        assert!(!fits_range(GIB, 2 * GIB as i64, 0));
        assert!(!fits_range(2 * GIB, 0, GIB as i64));
    }

    #[test]
    fn topology() {
        let ours: Segments = [(TOPOLOGY_NODE_KEY.to_string(), "a".to_string())].into();
        assert!(topology_matches(&ours.clone(), &ours));
        assert!(topology_matches(&Segments::new(), &ours));
        let other: Segments = [(TOPOLOGY_NODE_KEY.to_string(), "b".to_string())].into();
        assert!(!topology_matches(&other, &ours));
        let zone: Segments = [("zone".to_string(), "z".to_string())].into();
        assert!(!topology_matches(&zone, &ours));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secrets([("userKey".to_string(), "AQBsecret==".to_string())].into());
        let shown = format!("{s:?}");
        assert!(
            shown.contains("userKey") && !shown.contains("AQBsecret"),
            "{shown}"
        );
    }
}
