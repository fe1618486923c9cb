//! What an RBD pool keeps in Ceph: image names and image metadata, and the
//! pure decisions made over them (is this image complete? deleted? who
//! holds it?). Nothing about a volume is kept on local disk, so a controller
//! on another machine sees the same truth.
//!
//! Names: a volume `<pool>.<object>` is the image `csi-vol-<object>`, a
//! snapshot is the image `csi-snap-<object>`. An image that had to stay
//! behind after a delete (a parent of clones, see [`KEY_DELETED`]) keeps its
//! name; a new volume of the same name then takes the next free
//! *generation* `csi-vol-<object>.1`, `.2`, ... Generations of one object
//! always form a contiguous run from 0 (garbage collection removes only the
//! highest), so a lookup walks them up to the first missing one.
//!
//! Metadata keys (librbd copies a parent's metadata into a clone, so a
//! fresh clone's `haina.*` keys are removed before ours are written):
//!
//! | key | value |
//! |---|---|
//! | `haina.id` | the image's own name; written last, it marks the image complete |
//! | `haina.name` | the CO's request name |
//! | `haina.context` | the volume context (JSON) |
//! | `haina.source` | the content source (JSON), if any |
//! | `haina.created` | seconds since the epoch |
//! | `haina.publications` | node → publication (JSON) |
//! | `haina.attach.<node>` | the attachment of a node: its client id and address (JSON) |
//! | `haina.snapshot` | on snapshot images: name, source, size, time (JSON) |
//! | `haina.deleted` | deleted by the CO, kept only as a parent of clones |
//! | `haina.pool` | the haina pool that made the image: another pool never lists, deletes, clones or attaches it |
//! | `haina.encryption` | the image is encrypted with librbd's LUKS encryption: format and header size (JSON; never the passphrase), see [`super::crypt`] |
//! | `haina.flattened-from` | on an incomplete encrypted restore or clone: the image it was cloned from, set before it is flattened |
//! | `conf_rbd_qos_*` | the volume's QoS limits, as librbd reads them (see [`super::qos`]) |
//! | `haina.group` | on a group snapshot's record image `csi-group-<object>`: name, members, point in time (JSON) |
//! | `haina.point` | on a group member's snapshot image: the RBD group snapshot it was made from |
//! | `haina.patched` | on a group member being made: the group snapshot whose data it was brought to |

use std::collections::BTreeMap;

use haina_rbd::{EncryptionFormat, Watcher};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::ObjectId;
use crate::volume::{ContentSource, Publication, Snapshot, Volume};

pub const VOLUME_PREFIX: &str = "csi-vol-";
pub const SNAPSHOT_PREFIX: &str = "csi-snap-";
/// A group snapshot's record image, its RBD group, and the user snapshots
/// it takes of its sources are all named `csi-group-<object>`.
pub const GROUP_PREFIX: &str = "csi-group-";
/// The RBD snapshot of a snapshot image that restores clone from.
pub const RESTORE_SNAP: &str = "haina-restore";

pub const KEY_ID: &str = "haina.id";
pub const KEY_NAME: &str = "haina.name";
pub const KEY_CONTEXT: &str = "haina.context";
pub const KEY_SOURCE: &str = "haina.source";
pub const KEY_CREATED: &str = "haina.created";
pub const KEY_PUBLICATIONS: &str = "haina.publications";
pub const KEY_SNAPSHOT: &str = "haina.snapshot";
pub const KEY_DELETED: &str = "haina.deleted";
pub const KEY_POOL: &str = "haina.pool";
pub const KEY_ENCRYPTION: &str = "haina.encryption";
/// On an incomplete encrypted restore or clone: the image it was cloned
/// from, set just before it is flattened (removed once it is complete).
pub const KEY_FLATTENED_FROM: &str = "haina.flattened-from";
pub const KEY_GROUP: &str = "haina.group";
pub const KEY_POINT: &str = "haina.point";
pub const KEY_PATCHED: &str = "haina.patched";
pub const ATTACH_PREFIX: &str = "haina.attach.";
/// Every key haina owns starts with this.
pub const PREFIX: &str = "haina.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Snapshot,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Volume => VOLUME_PREFIX,
            Self::Snapshot => SNAPSHOT_PREFIX,
        }
    }
}

/// The image name of generation `generation` of an object.
pub fn image_name(kind: Kind, object: &str, generation: u32) -> String {
    match generation {
        0 => format!("{}{object}", kind.prefix()),
        g => format!("{}{object}.{g}", kind.prefix()),
    }
}

/// Splits an image name into (kind, object, generation); `None` for images
/// that are not haina's.
pub fn parse_image_name(name: &str) -> Option<(Kind, &str, u32)> {
    let (kind, rest) = if let Some(r) = name.strip_prefix(VOLUME_PREFIX) {
        (Kind::Volume, r)
    } else {
        (Kind::Snapshot, name.strip_prefix(SNAPSHOT_PREFIX)?)
    };
    let (object, generation) = match rest.split_once('.') {
        None => (rest, 0),
        Some((o, g)) => (o, g.parse().ok().filter(|g| *g > 0)?),
    };
    let ok = !object.is_empty()
        && object
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some((kind, object, generation))
}

/// A node's attachment, written by its `haina rbd-fuse` server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRecord {
    /// The server's client id (`client.<id>` in watcher lists).
    pub client: u64,
    /// Its address, as `ceph osd blocklist add` takes it.
    pub addr: String,
    pub mode: String,
    #[serde(default)]
    pub since: u64,
}

/// What a snapshot image records about the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRecord {
    pub name: String,
    pub source_volume_id: String,
    pub size: u64,
    pub created: (i64, i32),
    /// Set on the members of a group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot_id: Option<String>,
}

impl SnapRecord {
    /// The snapshot `id` this record describes.
    pub fn snapshot(self, id: &ObjectId) -> Snapshot {
        Snapshot {
            id: id.to_string(),
            name: self.name,
            source_volume_id: self.source_volume_id,
            size: self.size,
            created: self.created,
            ready: true,
            group_snapshot_id: self.group_snapshot_id,
        }
    }
}

/// How an encrypted image is encrypted (`haina.encryption`): the format of
/// its LUKS header and the header's size, which the image's raw size
/// exceeds the volume's capacity by. A clone inherits both from its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionRecord {
    #[serde(with = "format_name")]
    pub format: EncryptionFormat,
    /// Bytes of the header at the start of the raw image.
    pub header: u64,
}

/// `EncryptionFormat` as its name ("luks2") in JSON.
mod format_name {
    use haina_rbd::EncryptionFormat;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &EncryptionFormat, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(f.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EncryptionFormat, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An image's metadata (the `haina.*` keys and the QoS settings; others
/// are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta(pub BTreeMap<String, String>);

fn json<T: serde::de::DeserializeOwned>(image: &str, key: &str, v: &str) -> Result<T> {
    serde_json::from_str(v)
        .map_err(|e| Error::internal(format!("image {image}: metadata {key} is not valid"), e))
}

impl Meta {
    pub fn from_list(list: Vec<(String, String)>) -> Self {
        Self(
            list.into_iter()
                .filter(|(k, _)| k.starts_with(PREFIX) || k.starts_with(super::qos::CONF_PREFIX))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Complete: its last creation step ran (and it was not inherited).
    pub fn is_complete(&self, image: &str) -> bool {
        self.get(KEY_ID) == Some(image) && !self.is_deleted()
    }

    /// The haina pool the image belongs to, if recorded (images made
    /// before `haina.pool` existed record none).
    pub fn owner(&self) -> Option<&str> {
        self.get(KEY_POOL)
    }

    pub fn is_deleted(&self) -> bool {
        self.0.contains_key(KEY_DELETED)
    }

    /// The image's encryption, if it is encrypted.
    pub fn encryption(&self, image: &str) -> Result<Option<EncryptionRecord>> {
        self.get(KEY_ENCRYPTION)
            .map(|v| json(image, KEY_ENCRYPTION, v))
            .transpose()
    }

    /// The usable size of an image of `raw` bytes: less its LUKS header
    /// if it is encrypted.
    pub fn usable(&self, image: &str, raw: u64) -> Result<u64> {
        Ok(raw.saturating_sub(self.encryption(image)?.map_or(0, |e| e.header)))
    }

    pub fn publications(&self, image: &str) -> Result<BTreeMap<String, Publication>> {
        self.get(KEY_PUBLICATIONS)
            .map(|v| json(image, KEY_PUBLICATIONS, v))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Attach records by node (unreadable ones are skipped).
    pub fn attachments(&self) -> BTreeMap<String, AttachRecord> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let node = k.strip_prefix(ATTACH_PREFIX)?;
                Some((node.to_string(), serde_json::from_str(v).ok()?))
            })
            .collect()
    }

    /// The volume this (complete) image of `raw` bytes records (its
    /// capacity excludes an encryption header).
    pub fn volume(&self, id: &ObjectId, image: &str, raw: u64) -> Result<Volume> {
        Ok(Volume {
            id: id.to_string(),
            name: self.get(KEY_NAME).unwrap_or_default().to_string(),
            capacity: self.usable(image, raw)?,
            context: self
                .get(KEY_CONTEXT)
                .map(|v| json(image, KEY_CONTEXT, v))
                .transpose()?
                .unwrap_or_default(),
            source: self
                .get(KEY_SOURCE)
                .map(|v| json::<ContentSource>(image, KEY_SOURCE, v))
                .transpose()?,
            publications: self.publications(image)?,
            created: self
                .get(KEY_CREATED)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            qos: super::qos::from_meta(image, &self.0),
        })
    }

    /// The snapshot this (complete) snapshot image records.
    pub fn snapshot(&self, id: &ObjectId, image: &str) -> Result<Option<Snapshot>> {
        let Some(v) = self.get(KEY_SNAPSHOT) else {
            return Ok(None);
        };
        let r: SnapRecord = json(image, KEY_SNAPSHOT, v)?;
        Ok(Some(r.snapshot(id)))
    }
}

/// A client that has the image open and is not accounted for by a
/// publication: the fencing decision's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub client: u64,
    pub addr: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} (client.{} at {})",
            self.node, self.client, self.addr
        )
    }
}

/// Fencing: the watchers of an image that belong to a node other than
/// `node` which has no publication, i.e. stale mappings that could still
/// write. Watchers no attach record explains (e.g. a controller's own
/// short-lived open) are not counted; `own` (this process) never is.
pub fn stale_holders(
    watchers: &[Watcher],
    own: u64,
    records: &BTreeMap<String, AttachRecord>,
    publications: &BTreeMap<String, Publication>,
    node: &str,
) -> Vec<Holder> {
    watchers
        .iter()
        .filter(|w| w.id as u64 != own)
        .filter_map(|w| {
            let (n, r) = records.iter().find(|(_, r)| r.client == w.id as u64)?;
            (n != node && !publications.contains_key(n)).then(|| Holder {
                node: n.clone(),
                client: r.client,
                addr: w.addr.clone(),
            })
        })
        .collect()
}

/// Attach records whose client no longer watches the image: their servers
/// are gone (the node detached uncleanly, or died and its watch expired).
pub fn gone_records(watchers: &[Watcher], records: &BTreeMap<String, AttachRecord>) -> Vec<String> {
    records
        .iter()
        .filter(|(_, r)| !watchers.iter().any(|w| w.id as u64 == r.client))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Describes watchers for an error message, naming their nodes if known.
pub fn describe_watchers(watchers: &[Watcher], records: &BTreeMap<String, AttachRecord>) -> String {
    watchers
        .iter()
        .map(
            |w| match records.iter().find(|(_, r)| r.client == w.id as u64) {
                Some((n, _)) => format!("client.{} at {} (node {n})", w.id, w.addr),
                None => format!("client.{} at {}", w.id, w.addr),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::AccessMode;

    #[test]
    fn names() {
        assert_eq!(image_name(Kind::Volume, "pvc-1", 0), "csi-vol-pvc-1");
        assert_eq!(image_name(Kind::Snapshot, "s", 2), "csi-snap-s.2");
        assert_eq!(
            parse_image_name("csi-vol-pvc-1"),
            Some((Kind::Volume, "pvc-1", 0))
        );
        assert_eq!(
            parse_image_name("csi-snap-h-ab.3"),
            Some((Kind::Snapshot, "h-ab", 3))
        );
        assert_eq!(parse_image_name("csi-vol-x.0"), None);
        assert_eq!(parse_image_name("csi-vol-x.y"), None);
        assert_eq!(parse_image_name("other"), None);
        assert_eq!(parse_image_name("csi-vol-"), None);
    }

    #[test]
    fn completeness() {
        let m = |kv: &[(&str, &str)]| {
            Meta::from_list(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        // A clone inherits its parent's haina.id: not complete.
        assert!(!m(&[(KEY_ID, "csi-vol-a")]).is_complete("csi-vol-b"));
        assert!(m(&[(KEY_ID, "csi-vol-b")]).is_complete("csi-vol-b"));
        assert!(!m(&[(KEY_ID, "csi-vol-b"), (KEY_DELETED, "1")]).is_complete("csi-vol-b"));
        assert!(m(&[("other.key", "1")]).0.is_empty());
    }

    #[test]
    fn encryption_record() {
        let m = |kv: &[(&str, &str)]| {
            Meta::from_list(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let enc = m(&[(KEY_ENCRYPTION, r#"{"format":"luks2","header":16777216}"#)]);
        assert_eq!(
            enc.encryption("i").unwrap(),
            Some(EncryptionRecord {
                format: EncryptionFormat::Luks2,
                header: 16 << 20
            })
        );
        assert_eq!(enc.usable("i", 80 << 20).unwrap(), 64 << 20);
        assert_eq!(m(&[]).usable("i", 80 << 20).unwrap(), 80 << 20);
        let bad = m(&[(KEY_ENCRYPTION, r#"{"format":"luks3","header":1}"#)]);
        assert!(bad.encryption("i").is_err());
        let rec = EncryptionRecord {
            format: EncryptionFormat::Luks1,
            header: 4 << 20,
        };
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"format":"luks1","header":4194304}"#
        );
    }

    #[test]
    fn fencing() {
        let w = |id: i64, addr: &str| Watcher {
            addr: addr.into(),
            id,
            cookie: 1,
        };
        let rec = |client| AttachRecord {
            client,
            addr: String::new(),
            mode: "exclusive".into(),
            since: 0,
        };
        let records = BTreeMap::from([("a".to_string(), rec(10)), ("b".to_string(), rec(20))]);
        let pubs = BTreeMap::from([(
            "b".to_string(),
            Publication {
                readonly: false,
                mode: AccessMode::SingleNodeWriter,
                block: false,
            },
        )]);
        let watchers = [
            w(10, "1.2.3.4:0/1"),
            w(20, "1.2.3.5:0/2"),
            w(99, "x"),
            w(5, "own"),
        ];
        // a is attached without a publication: a stale mapping, named.
        let stale = stale_holders(&watchers, 5, &records, &pubs, "c");
        assert_eq!(
            stale,
            vec![Holder {
                node: "a".into(),
                client: 10,
                addr: "1.2.3.4:0/1".into()
            }]
        );
        // Publishing to a itself again is not fenced by its own mapping.
        assert!(stale_holders(&watchers, 5, &records, &pubs, "a").is_empty());
        // b's server is gone once its watch is.
        assert_eq!(
            gone_records(&watchers[..1], &records),
            vec!["b".to_string()]
        );
        assert!(describe_watchers(&watchers[..1], &records).contains("node a"));
    }
}
