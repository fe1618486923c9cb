//! Identifiers that reach the filesystem, validated before they do.
//!
//! A volume or snapshot ID is `<pool>.<object>`: the pool name from the
//! config and an object name made only of `[A-Za-z0-9_-]`. Neither part can
//! hold `/`, `..`, NUL or anything else that would let an ID escape its pool
//! directory, and the whole ID fits the CSI limit of 128 bytes.
//!
//! Two kinds of bad input are told apart, as the CSI error tables require:
//! - an ID with bytes no haina ID could ever hold (`/`, NUL, over-long) is
//!   `INVALID_ARGUMENT`;
//! - an ID that is well-formed text but not one of ours (no pool part, an
//!   unknown pool) simply names nothing: `NOT_FOUND`, or OK for deletes.
//!
//! Object names derive from the CO's request name, so a retried create
//! lands on the same ID even after a crash.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How many bytes of a client-supplied string an error message repeats.
pub const ECHO_MAX: usize = 64;

/// Client input as an error message repeats it: quoted and escaped, and cut
/// to [`ECHO_MAX`] bytes (on a character boundary) followed by how many bytes
/// were left out, so no message grows with the request (a 10 KB `node_id`
/// echoed whole overflows gRPC's metadata and the client sees a protocol
/// error instead of the status). Use it for every echo of request text.
pub fn echo(s: &str) -> String {
    if s.len() <= ECHO_MAX {
        return format!("{s:?}");
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} more bytes)", &s[..end], s.len() - end)
}

/// The CSI spec's limit on IDs an SP returns.
pub const MAX_ID_LEN: usize = 128;
const MAX_POOL_LEN: usize = 31;
const MAX_OBJECT_LEN: usize = MAX_ID_LEN - MAX_POOL_LEN - 1;

/// A pool's name from the config: `[a-z0-9][a-z0-9-]*`, at most 31 bytes.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(String);

impl PoolName {
    pub fn parse(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_POOL_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(Error::InvalidArgument(format!(
                "pool name {} is invalid: use 1-{MAX_POOL_LEN} of [a-z0-9-], not starting with '-'",
                echo(s)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PoolName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<PoolName> for String {
    fn from(p: PoolName) -> String {
        p.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<pool>.<object>`: the ID of a volume or a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pool: PoolName,
    object: String,
}

pub type VolumeId = ObjectId;
pub type SnapshotId = ObjectId;
/// A group snapshot's ID: `<pool>.<object>` from its request name, like a
/// snapshot's (the two never meet: they are stored apart).
pub type GroupSnapshotId = ObjectId;

/// What [`ObjectId::parse`] made of a client-supplied ID.
#[derive(Debug)]
pub enum Parsed {
    Ours(ObjectId),
    /// Harmless text, but no haina ID: names nothing.
    Foreign,
}

fn object_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_OBJECT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ObjectId {
    /// Validates an ID from a request. `field` names the request field in errors.
    pub fn parse(field: &str, s: &str) -> Result<Parsed> {
        if s.is_empty() {
            return Err(Error::InvalidArgument(format!("{field} is required")));
        }
        if s.len() > MAX_ID_LEN {
            return Err(Error::InvalidArgument(format!(
                "{field} is {} bytes long; IDs are at most {MAX_ID_LEN}",
                s.len()
            )));
        }
        if s.bytes()
            .any(|b| b == 0 || b == b'/' || b == b'\\' || b.is_ascii_control())
        {
            return Err(Error::InvalidArgument(format!(
                "{field} {} holds '/', '\\', NUL or a control character",
                echo(s)
            )));
        }
        if s.contains("..") {
            return Err(Error::InvalidArgument(format!(
                "{field} {} holds '..'",
                echo(s)
            )));
        }
        let Some((pool, object)) = s.split_once('.') else {
            return Ok(Parsed::Foreign);
        };
        match PoolName::parse(pool) {
            Ok(pool) if object_ok(object) => Ok(Parsed::Ours(Self {
                pool,
                object: object.to_string(),
            })),
            _ => Ok(Parsed::Foreign),
        }
    }

    /// Like [`parse`](Self::parse), but an ID that is not ours is `NOT_FOUND`.
    pub fn parse_existing(field: &str, s: &str) -> Result<Self> {
        match Self::parse(field, s)? {
            Parsed::Ours(id) => Ok(id),
            Parsed::Foreign => Err(Error::NotFound(format!(
                "{field} {} does not exist",
                echo(s)
            ))),
        }
    }

    /// The ID for a CO request name in `pool`. Names made of safe characters
    /// are kept (so `pvc-…` stays readable in `losetup` and `ls`); any other
    /// name is hashed. A hashed object starts with `h-`, which a kept name
    /// never produces.
    pub fn for_name(pool: &PoolName, name: &str) -> Self {
        let hashed_form = name.len() == 34
            && name.starts_with("h-")
            && name[2..].bytes().all(|b| b.is_ascii_hexdigit());
        let object = if object_ok(name) && !hashed_form && name.len() <= MAX_OBJECT_LEN {
            name.to_string()
        } else {
            hashed_name(name)
        };
        Self {
            pool: pool.clone(),
            object,
        }
    }

    /// The ID of the member snapshot of `volume` in the group snapshot
    /// named `group_name`: a hash of both, so that a retried create lands
    /// on the same member. The hashed text starts with a NUL, which no CSI
    /// name may hold, so it never equals an ordinary snapshot's.
    pub fn for_group_member(pool: &PoolName, group_name: &str, volume: &VolumeId) -> Self {
        Self {
            pool: pool.clone(),
            object: hashed_name(&format!("\0group\0{group_name}\0{volume}")),
        }
    }

    pub fn pool(&self) -> &PoolName {
        &self.pool
    }

    /// The object part: safe to use as one path component.
    pub fn object(&self) -> &str {
        &self.object
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.pool, self.object)
    }
}

/// `h-` and 32 hex digits of the SHA-256 of `s`: a safe, fixed-length file
/// name for text that cannot be one itself.
pub fn hashed_name(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// Validates a CO-supplied path (`target_path`, `staging_target_path`, ...):
/// required, absolute, no NUL, no `..` component, normalised.
pub fn abs_path(field: &str, s: &str) -> Result<PathBuf> {
    if s.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    if s.contains('\0') {
        return Err(Error::InvalidArgument(format!("{field} holds a NUL byte")));
    }
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{field} {} is not an absolute path",
            echo(s)
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::InvalidArgument(format!(
            "{field} {} holds a '..' component",
            echo(s)
        )));
    }
    if s.len() > 4096 {
        return Err(Error::InvalidArgument(format!(
            "{field} is longer than PATH_MAX"
        )));
    }
    Ok(p.components().collect())
}

/// How much of a client-supplied path an error message repeats.
const MAX_PATH_ECHO: usize = 256;

/// A client-supplied path for an error message: whole if short, else its
/// start and how long it was (a gRPC status travels in a header).
pub fn echo_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.len() <= MAX_PATH_ECHO {
        return s.into_owned();
    }
    let mut end = MAX_PATH_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// A node ID: printable, no whitespace, at most 128 bytes (the CSI limit).
pub fn node_id(field: &str, s: &str) -> Result<String> {
    if s.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    if s.len() > MAX_ID_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(format!(
            "{field} {} must be 1-{MAX_ID_LEN} printable ASCII bytes without spaces",
            echo(s)
        )));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids() {
        let ours = |s| matches!(ObjectId::parse("volume_id", s), Ok(Parsed::Ours(_)));
        let foreign = |s| matches!(ObjectId::parse("volume_id", s), Ok(Parsed::Foreign));
        let invalid = |s| {
            matches!(
                ObjectId::parse("volume_id", s),
                Err(Error::InvalidArgument(_))
            )
        };
        assert!(ours("default.pvc-1234"));
        assert!(ours("fast-ssd.h-00ff"));
        assert!(foreign("reallyfakevolumeid"));
        assert!(foreign("Default.x")); // upper-case pool: not ours
        assert!(foreign("default.a.b"));
        assert!(foreign("default."));
        for bad in [
            "",
            "default./etc",
            "../x",
            "default...",
            "a\0b",
            "default.a\\b",
            "x\ny",
        ] {
            assert!(invalid(bad), "{bad:?}");
        }
        assert!(invalid(&"a".repeat(129)));
        let id = ObjectId::parse_existing("volume_id", "default.pvc-1").unwrap();
        assert_eq!((id.pool().as_str(), id.object()), ("default", "pvc-1"));
        assert_eq!(id.to_string(), "default.pvc-1");
        let e = ObjectId::parse_existing("volume_id", "nope").unwrap_err();
        assert!(matches!(e, Error::NotFound(_)));
    }

    #[test]
    fn ids_for_names_are_stable_safe_and_bounded() {
        let pool = PoolName::parse("default").unwrap();
        assert_eq!(ObjectId::for_name(&pool, "pvc-abc").object(), "pvc-abc");
        for name in ["a/b", "../../etc", "x y", "ünï", &"n".repeat(200)] {
            let id = ObjectId::for_name(&pool, name);
            assert!(id.object().starts_with("h-"), "{name}");
            assert_eq!(id, ObjectId::for_name(&pool, name));
            assert!(id.to_string().len() <= MAX_ID_LEN);
            assert!(matches!(
                ObjectId::parse("id", &id.to_string()),
                Ok(Parsed::Ours(_))
            ));
        }
        // A name that looks like a hash is hashed too, so it cannot collide.
        let h = ObjectId::for_name(&pool, "x/y").object().to_string();
        assert_ne!(ObjectId::for_name(&pool, &h).object(), h);
    }

    #[test]
    fn group_members_are_stable_and_never_an_ordinary_name() {
        let pool = PoolName::parse("default").unwrap();
        let v1 = VolumeId::parse_existing("v", "default.v1").unwrap();
        let v2 = VolumeId::parse_existing("v", "default.v2").unwrap();
        let m = ObjectId::for_group_member(&pool, "g", &v1);
        assert_eq!(m, ObjectId::for_group_member(&pool, "g", &v1));
        assert_ne!(m, ObjectId::for_group_member(&pool, "g", &v2));
        assert_ne!(m, ObjectId::for_group_member(&pool, "h", &v1));
        assert!(m.object().starts_with("h-"), "{m}");
        assert!(matches!(
            ObjectId::parse("id", &m.to_string()),
            Ok(Parsed::Ours(_))
        ));
        // The hashed text itself is no valid name (create refuses a NUL)...
        assert!(crate::group::check_name("name", "\0group\0g\0default.v1").is_err());
        // ...and the same text without the NULs is an ordinary (hashed) name.
        assert_ne!(m, ObjectId::for_name(&pool, "group\0g\0default.v1"));
        assert_ne!(m, ObjectId::for_name(&pool, "groupgdefault.v1"));
    }

    #[test]
    fn echoes_are_bounded() {
        assert_eq!(echo("node-a"), "\"node-a\"");
        assert_eq!(
            echo(&"x".repeat(ECHO_MAX)),
            format!("{:?}", "x".repeat(ECHO_MAX))
        );
        let e = echo(&"é".repeat(5000));
        assert!(e.len() < ECHO_MAX + 40, "{e}");
        assert!(e.ends_with("(9936 more bytes)"), "{e}");
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
        let e = node_id("node_id", &"n".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && e.contains("more bytes"), "{e}");
    }

    #[test]
    fn paths() {
        assert_eq!(abs_path("p", "/a//b/./c").unwrap(), PathBuf::from("/a/b/c"));
        for bad in ["", "rel/x", "/a/../b", "/a\0"] {
            assert!(
                matches!(abs_path("target_path", bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert!(PoolName::parse("ok-1").is_ok());
        for bad in ["", "-x", "A", "a_b", "a.b", &"p".repeat(32)] {
            assert!(PoolName::parse(bad).is_err(), "{bad}");
        }
        assert!(node_id("node_id", "node a").is_err());
        assert!(node_id("node_id", "node-a").is_ok());
    }
}
