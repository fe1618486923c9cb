//! Group snapshots: the CSI GroupController service's logic over typed
//! arguments (the gRPC layer in [`crate::grpc::group`] parses and
//! converts; the pools do the storage work, see
//! [`crate::backend::Backend::create_group_snapshot`]).
//!
//! A group snapshot is one member snapshot per source volume, all taken at
//! one point in time. Its ID is `<pool>.<object>` from its request name,
//! like a snapshot's; each member's ID is a hash of the group's name and
//! the member's volume ID ([`ObjectId::for_group_member`]), so a retried
//! create lands on the same members. Members are ordinary snapshots for
//! everything but deletion: they restore with CreateVolume, show in
//! ListSnapshots and GetSnapshot (with their `group_snapshot_id`), and go
//! only with their group (DeleteSnapshot of one is INVALID_ARGUMENT, as the
//! spec's "snapshot is part of a group" row says).
//!
//! Rules (the spec's error tables):
//! - `name` and `source_volume_ids` are required; a volume may appear once;
//!   all of them must be in one pool (FAILED_PRECONDITION otherwise: the
//!   spec's "cannot snapshot multiple volumes together");
//! - the same name with another member set is ALREADY_EXISTS, in any pool;
//! - Get and Delete check `snapshot_ids` against the group's members
//!   (INVALID_ARGUMENT on a mismatch) once the group is found; Get of an
//!   unknown group is NOT_FOUND, Delete of one is OK.
//!
//! Concurrency: a create claims the group, then every member volume and
//! member snapshot (in ID order); a delete the group and its member
//! snapshots. Any collision is ABORTED, so no volume is snapshotted,
//! staged, expanded or deleted while a group snapshot of it is taken.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::GroupSpec;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ids::{GroupSnapshotId, ObjectId, Parsed, VolumeId, echo};
use crate::limiter::Guard;
use crate::volume::{GroupSnapshot, Secrets};

/// Keys Kubernetes' sidecars add on their own; accepted and ignored.
const K8S_PREFIX: &str = "csi.storage.k8s.io/";

/// Validates a CO-supplied name: required, and free of the control
/// characters the spec bans from names (U+0000-U+0008, U+000B, U+000C,
/// U+000E-U+001F, U+007F-U+009F).
pub fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    let banned = |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
    if name.chars().any(banned) {
        return Err(Error::InvalidArgument(format!(
            "{field} {} holds a control character the CSI spec bans from names",
            echo(name)
        )));
    }
    Ok(())
}

pub struct CreateGroupRequest {
    pub name: String,
    pub source_volume_ids: Vec<String>,
    pub parameters: BTreeMap<String, String>,
}

/// The source volumes of a request: parsed, distinct, in one pool.
fn parse_sources(raw: &[String]) -> Result<Vec<VolumeId>> {
    if raw.is_empty() {
        return Err(Error::InvalidArgument(
            "source_volume_ids is required".into(),
        ));
    }
    let mut ids: Vec<VolumeId> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let field = format!("source_volume_ids[{i}]");
        let id = match ObjectId::parse(&field, s)? {
            Parsed::Ours(id) => id,
            Parsed::Foreign => {
                return Err(Error::NotFound(format!(
                    "{field} {} does not exist",
                    echo(s)
                )));
            }
        };
        if let Some(j) = ids.iter().position(|x| *x == id) {
            return Err(Error::InvalidArgument(format!(
                "{field} {id} repeats source_volume_ids[{j}]: each volume is snapshotted once"
            )));
        }
        if let Some(first) = ids.first()
            && first.pool() != id.pool()
        {
            return Err(Error::FailedPrecondition(format!(
                "{field} {id} is in pool {}, but source_volume_ids[0] {first} is in pool {}: \
                 a group snapshot's volumes must all be in one pool",
                id.pool(),
                first.pool()
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// The source volume IDs of a group's members, sorted.
fn sources_of(g: &GroupSnapshot) -> BTreeSet<&str> {
    g.members
        .iter()
        .map(|s| s.source_volume_id.as_str())
        .collect()
}

pub fn create_group_snapshot(
    d: &Driver,
    req: CreateGroupRequest,
    secrets: &Secrets,
) -> Result<GroupSnapshot> {
    check_name("name", &req.name)?;
    let sources = parse_sources(&req.source_volume_ids)?;
    for k in req.parameters.keys() {
        if !k.starts_with(K8S_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "parameters: unknown key {} (group snapshots take no parameters)",
                echo(k)
            )));
        }
    }
    let pool = sources[0].pool().clone();
    let backend = d.pool_of(&sources[0]).map_err(|_| {
        Error::NotFound(format!(
            "source_volume_ids[0] {} does not exist",
            sources[0]
        ))
    })?;
    let id = GroupSnapshotId::for_name(&pool, &req.name);
    let wanted: BTreeSet<String> = sources.iter().map(ToString::to_string).collect();
    let conflict = |g: &GroupSnapshot| {
        let has: Vec<&str> = sources_of(g).into_iter().collect();
        Error::AlreadyExists(format!(
            "a group snapshot named {} already exists ({}) for volumes [{}]",
            echo(&req.name),
            g.id,
            has.join(", ")
        ))
    };
    // A name is unique across pools. Another pool that these secrets
    // cannot read (another Ceph cluster) cannot hold it under them.
    for other in d.pools.values().filter(|b| *b.name() != pool) {
        let other_id = GroupSnapshotId::for_name(other.name(), &req.name);
        match other.get_group_snapshot(&other_id, secrets) {
            Ok(Some(g)) => return Err(conflict(&g)),
            Ok(None) => {}
            Err(e) => tracing::debug!(pool = %other.name(), error = %e,
                "group snapshot name check skipped a pool these secrets cannot read"),
        }
    }

    let _group = d.limiter.group(&id)?;
    let mut sorted = sources.clone();
    sorted.sort();
    let members: Vec<_> = sorted
        .iter()
        .map(|v| (v.clone(), ObjectId::for_group_member(&pool, &req.name, v)))
        .collect();
    let mut guards: Vec<Guard> = Vec::with_capacity(members.len() * 2);
    for (v, s) in &members {
        guards.push(d.limiter.volume(v)?);
        guards.push(d.limiter.snapshot(s)?);
    }

    match backend.get_group_snapshot(&id, secrets)? {
        Some(g) => {
            let has: BTreeSet<String> = sources_of(&g).into_iter().map(String::from).collect();
            if has != wanted {
                return Err(conflict(&g));
            }
            // The same group again: the backend's create is idempotent,
            // and finishes what a crash after its commit left (its sources
            // may be gone since; the group stands without them).
        }
        None => {
            for (i, v) in sources.iter().enumerate() {
                if backend.get_volume(v, secrets)?.is_none() {
                    return Err(Error::NotFound(format!(
                        "source_volume_ids[{i}] {v} does not exist"
                    )));
                }
            }
        }
    }
    let spec = GroupSpec {
        id,
        name: req.name,
        members,
    };
    backend.create_group_snapshot(&spec, secrets)
}

/// Checks a request's `snapshot_ids` against a group's members: the same
/// set, or INVALID_ARGUMENT naming what is missing and what is not a member.
pub fn check_snapshot_ids(g: &GroupSnapshot, snapshot_ids: &[String]) -> Result<()> {
    let have: BTreeSet<&str> = g.members.iter().map(|s| s.id.as_str()).collect();
    let asked: BTreeSet<&str> = snapshot_ids.iter().map(String::as_str).collect();
    if have == asked {
        return Ok(());
    }
    let list = |v: Vec<&str>| {
        v.iter()
            .take(8)
            .map(|s| echo(s))
            .collect::<Vec<_>>()
            .join(", ")
            + if v.len() > 8 { ", …" } else { "" }
    };
    let missing: Vec<&str> = have.difference(&asked).copied().collect();
    let foreign: Vec<&str> = asked.difference(&have).copied().collect();
    let mut why = Vec::new();
    if asked.is_empty() {
        why.push("none given (the field is required)".to_string());
    } else {
        if !missing.is_empty() {
            why.push(format!("missing {}", list(missing)));
        }
        if !foreign.is_empty() {
            why.push(format!("not members: {}", list(foreign)));
        }
    }
    Err(Error::InvalidArgument(format!(
        "snapshot_ids do not match group snapshot {} ({} members): {}",
        g.id,
        have.len(),
        why.join("; ")
    )))
}

pub fn delete_group_snapshot(
    d: &Driver,
    raw_id: &str,
    snapshot_ids: &[String],
    secrets: &Secrets,
) -> Result<()> {
    let Parsed::Ours(id) = ObjectId::parse("group_snapshot_id", raw_id)? else {
        return Ok(());
    };
    let Ok(backend) = d.pool_of(&id) else {
        return Ok(());
    };
    let _group = d.limiter.group(&id)?;
    let mut guards: Vec<Guard> = Vec::new();
    if let Some(g) = backend.get_group_snapshot(&id, secrets)? {
        check_snapshot_ids(&g, snapshot_ids)?;
        for s in &g.members {
            guards.push(
                d.limiter
                    .snapshot(&ObjectId::parse_existing("snapshot", &s.id)?)?,
            );
        }
    }
    // Also when nothing is visible: a crashed create or delete may have
    // left members behind, which only this call can still find.
    backend.delete_group_snapshot(&id, secrets)
}

pub fn get_group_snapshot(
    d: &Driver,
    raw_id: &str,
    snapshot_ids: &[String],
    secrets: &Secrets,
) -> Result<GroupSnapshot> {
    let id = GroupSnapshotId::parse_existing("group_snapshot_id", raw_id)?;
    let g = d
        .pool_of(&id)
        .ok()
        .map(|b| b.get_group_snapshot(&id, secrets))
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            Error::NotFound(format!("group_snapshot_id {} does not exist", echo(raw_id)))
        })?;
    check_snapshot_ids(&g, snapshot_ids)?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Snapshot;

    fn group(members: &[(&str, &str)]) -> GroupSnapshot {
        GroupSnapshot {
            id: "p.g".into(),
            name: "g".into(),
            members: members
                .iter()
                .map(|(snap, vol)| Snapshot {
                    id: snap.to_string(),
                    name: String::new(),
                    source_volume_id: vol.to_string(),
                    size: 1,
                    created: (0, 0),
                    ready: true,
                    group_snapshot_id: Some("p.g".into()),
                })
                .collect(),
            created: (0, 0),
        }
    }

    #[test]
    fn snapshot_ids_must_be_exactly_the_members() {
        let g = group(&[("p.s1", "p.v1"), ("p.s2", "p.v2")]);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_snapshot_ids(&g, &ids(&["p.s2", "p.s1"])).is_ok());
        // Repeats do not matter; the set does.
        assert!(check_snapshot_ids(&g, &ids(&["p.s2", "p.s1", "p.s1"])).is_ok());
        for (asked, says) in [
            (&[][..], "none given"),
            (&["p.s1"][..], "missing \"p.s2\""),
            (&["p.s1", "p.s2", "p.x"][..], "not members: \"p.x\""),
            (
                &["p.s1", "p.x"][..],
                "missing \"p.s2\"; not members: \"p.x\"",
            ),
        ] {
            let e = check_snapshot_ids(&g, &ids(asked)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains(says) && m.contains("snapshot_ids") && m.contains("p.g")),
                "{asked:?}: {e}"
            );
        }
    }

    #[test]
    fn sources_are_required_distinct_and_in_one_pool() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_sources(&s(&["a.v2", "a.v1"])).unwrap().len(), 2);
        let code = |v: &[&str]| parse_sources(&s(v)).unwrap_err().code();
        assert_eq!(code(&[]), tonic::Code::InvalidArgument);
        assert_eq!(code(&["a.v1", "a.v1"]), tonic::Code::InvalidArgument);
        assert_eq!(code(&["a.v1", "b.v2"]), tonic::Code::FailedPrecondition);
        assert_eq!(code(&["a.v1", "not-ours"]), tonic::Code::NotFound);
        assert_eq!(code(&["a.v1", "a/../x"]), tonic::Code::InvalidArgument);
        let e = parse_sources(&s(&["a.v1", "b.v2"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("source_volume_ids[1]") && e.contains("one pool"),
            "{e}"
        );
    }

    #[test]
    fn names_without_banned_control_characters() {
        assert!(check_name("name", "group-1 ünï").is_ok());
        assert!(check_name("name", "tab\tand\nnewline\r").is_ok());
        for bad in ["", "a\0b", "a\u{1b}b", "a\u{7f}", "a\u{85}"] {
            let e = check_name("name", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
