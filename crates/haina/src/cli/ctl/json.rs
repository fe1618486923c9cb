//! CSI responses as JSON, field by field, with the proto's field names.
//!
//! prost messages do not implement `Serialize`, and a derive would print
//! enum numbers; here enums become their proto names (`SINGLE_NODE_WRITER`),
//! maps are sorted, timestamps are RFC 3339, and wrapper types (`BoolValue`,
//! `Int64Value`) are plain values or absent. Responses carry no secrets, and
//! nothing here ever sees a request.

use std::collections::{BTreeMap, HashMap};

use haina_csi::v1 as csi;
use serde_json::{Map, Value, json};

fn sorted(m: &HashMap<String, String>) -> Value {
    json!(m.iter().collect::<BTreeMap<_, _>>())
}

/// A proto enum's name, or its number when this build does not know it.
fn enum_name<E>(v: i32, name: impl Fn(&E) -> &'static str) -> Value
where
    E: TryFrom<i32>,
{
    match E::try_from(v) {
        Ok(e) => json!(name(&e)),
        Err(_) => json!(v),
    }
}

pub fn empty() -> Value {
    Value::Object(Map::new())
}

pub fn timestamp(t: &prost_types::Timestamp) -> Value {
    json!(super::render::rfc3339(t.seconds, t.nanos))
}

pub fn topology(t: &csi::Topology) -> Value {
    json!({ "segments": sorted(&t.segments) })
}

pub fn capability(c: &csi::VolumeCapability) -> Value {
    use csi::volume_capability::AccessType;
    use csi::volume_capability::access_mode::Mode;
    let mut o = Map::new();
    match &c.access_type {
        Some(AccessType::Block(_)) => {
            o.insert("block".into(), json!({}));
        }
        Some(AccessType::Mount(m)) => {
            o.insert(
                "mount".into(),
                json!({
                    "fs_type": m.fs_type,
                    "mount_flags": m.mount_flags,
                    "volume_mount_group": m.volume_mount_group,
                }),
            );
        }
        None => {}
    }
    if let Some(m) = &c.access_mode {
        o.insert(
            "access_mode".into(),
            json!({ "mode": enum_name(m.mode, Mode::as_str_name) }),
        );
    }
    Value::Object(o)
}

fn content_source(s: &csi::VolumeContentSource) -> Value {
    use csi::volume_content_source::Type;
    match &s.r#type {
        Some(Type::Snapshot(s)) => json!({ "snapshot": { "snapshot_id": s.snapshot_id } }),
        Some(Type::Volume(v)) => json!({ "volume": { "volume_id": v.volume_id } }),
        None => json!({}),
    }
}

pub fn volume(v: &csi::Volume) -> Value {
    let mut o = Map::new();
    o.insert("volume_id".into(), json!(v.volume_id));
    o.insert("capacity_bytes".into(), json!(v.capacity_bytes));
    o.insert("volume_context".into(), sorted(&v.volume_context));
    if let Some(s) = &v.content_source {
        o.insert("content_source".into(), content_source(s));
    }
    o.insert(
        "accessible_topology".into(),
        Value::Array(v.accessible_topology.iter().map(topology).collect()),
    );
    Value::Object(o)
}

pub fn snapshot(s: &csi::Snapshot) -> Value {
    let mut o = Map::new();
    o.insert("snapshot_id".into(), json!(s.snapshot_id));
    o.insert("source_volume_id".into(), json!(s.source_volume_id));
    o.insert("size_bytes".into(), json!(s.size_bytes));
    if let Some(t) = &s.creation_time {
        o.insert("creation_time".into(), timestamp(t));
    }
    o.insert("ready_to_use".into(), json!(s.ready_to_use));
    if !s.group_snapshot_id.is_empty() {
        o.insert("group_snapshot_id".into(), json!(s.group_snapshot_id));
    }
    Value::Object(o)
}

fn condition(c: &csi::VolumeCondition) -> Value {
    json!({ "abnormal": c.abnormal, "message": c.message })
}

pub fn plugin_info(r: &csi::GetPluginInfoResponse) -> Value {
    json!({
        "name": r.name,
        "vendor_version": r.vendor_version,
        "manifest": sorted(&r.manifest),
    })
}

pub fn plugin_capabilities(r: &csi::GetPluginCapabilitiesResponse) -> Value {
    use csi::plugin_capability::Type;
    use csi::plugin_capability::service::Type as Service;
    use csi::plugin_capability::volume_expansion::Type as Expansion;
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Service(s)) => {
                json!({ "service": enum_name(s.r#type, Service::as_str_name) })
            }
            Some(Type::VolumeExpansion(e)) => {
                json!({ "volume_expansion": enum_name(e.r#type, Expansion::as_str_name) })
            }
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}

pub fn probe(r: &csi::ProbeResponse) -> Value {
    // An unset `ready` means ready (CSI spec).
    json!({ "ready": r.ready.unwrap_or(true) })
}

pub fn create_volume(r: &csi::CreateVolumeResponse) -> Value {
    json!({ "volume": r.volume.as_ref().map(volume) })
}

pub fn controller_publish(r: &csi::ControllerPublishVolumeResponse) -> Value {
    json!({ "publish_context": sorted(&r.publish_context) })
}

pub fn validate(r: &csi::ValidateVolumeCapabilitiesResponse) -> Value {
    let confirmed = r.confirmed.as_ref().map(|c| {
        json!({
            "volume_context": sorted(&c.volume_context),
            "volume_capabilities": c.volume_capabilities.iter().map(capability).collect::<Vec<_>>(),
            "parameters": sorted(&c.parameters),
            "mutable_parameters": sorted(&c.mutable_parameters),
        })
    });
    json!({ "confirmed": confirmed, "message": r.message })
}

pub fn list_volumes(r: &csi::ListVolumesResponse) -> Value {
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            let status = e.status.as_ref().map(|s| {
                json!({
                    "published_node_ids": s.published_node_ids,
                    "volume_condition": s.volume_condition.as_ref().map(condition),
                })
            });
            json!({ "volume": e.volume.as_ref().map(volume), "status": status })
        })
        .collect();
    json!({ "entries": entries, "next_token": r.next_token })
}

pub fn get_volume(r: &csi::ControllerGetVolumeResponse) -> Value {
    let status = r.status.as_ref().map(|s| {
        json!({
            "published_node_ids": s.published_node_ids,
            "volume_condition": s.volume_condition.as_ref().map(condition),
        })
    });
    json!({ "volume": r.volume.as_ref().map(volume), "status": status })
}

pub fn capacity(r: &csi::GetCapacityResponse) -> Value {
    json!({
        "available_capacity": r.available_capacity,
        "maximum_volume_size": r.maximum_volume_size,
        "minimum_volume_size": r.minimum_volume_size,
    })
}

pub fn controller_capabilities(r: &csi::ControllerGetCapabilitiesResponse) -> Value {
    use csi::controller_service_capability::Type;
    use csi::controller_service_capability::rpc::Type as Rpc;
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Rpc(rpc)) => json!({ "rpc": enum_name(rpc.r#type, Rpc::as_str_name) }),
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}

pub fn with_snapshot(s: Option<&csi::Snapshot>) -> Value {
    json!({ "snapshot": s.map(snapshot) })
}

pub fn list_snapshots(r: &csi::ListSnapshotsResponse) -> Value {
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| json!({ "snapshot": e.snapshot.as_ref().map(snapshot) }))
        .collect();
    json!({ "entries": entries, "next_token": r.next_token })
}

pub fn controller_expand(r: &csi::ControllerExpandVolumeResponse) -> Value {
    json!({
        "capacity_bytes": r.capacity_bytes,
        "node_expansion_required": r.node_expansion_required,
    })
}

pub fn node_stats(r: &csi::NodeGetVolumeStatsResponse) -> Value {
    use csi::volume_usage::Unit;
    let usage: Vec<Value> = r
        .usage
        .iter()
        .map(|u| {
            json!({
                "unit": enum_name(u.unit, Unit::as_str_name),
                "total": u.total,
                "used": u.used,
                "available": u.available,
            })
        })
        .collect();
    json!({
        "usage": usage,
        "volume_condition": r.volume_condition.as_ref().map(condition),
    })
}

pub fn node_expand(r: &csi::NodeExpandVolumeResponse) -> Value {
    json!({ "capacity_bytes": r.capacity_bytes })
}

pub fn node_capabilities(r: &csi::NodeGetCapabilitiesResponse) -> Value {
    use csi::node_service_capability::Type;
    use csi::node_service_capability::rpc::Type as Rpc;
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Rpc(rpc)) => json!({ "rpc": enum_name(rpc.r#type, Rpc::as_str_name) }),
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}

pub fn node_info(r: &csi::NodeGetInfoResponse) -> Value {
    json!({
        "node_id": r.node_id,
        "max_volumes_per_node": r.max_volumes_per_node,
        "accessible_topology": r.accessible_topology.as_ref().map(topology),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_become_names_and_maps_sort() {
        use csi::volume_capability::{AccessMode, AccessType, MountVolume};
        let c = csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            })),
            access_mode: Some(AccessMode { mode: 1 }),
        };
        let v = capability(&c);
        assert_eq!(v["access_mode"]["mode"], "SINGLE_NODE_WRITER");
        assert_eq!(v["mount"]["fs_type"], "xfs");
        let unknown = enum_name(99, csi::volume_capability::access_mode::Mode::as_str_name);
        assert_eq!(unknown, json!(99));
        let t = csi::Topology {
            segments: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into(),
        };
        assert_eq!(
            serde_json::to_string(&topology(&t)).unwrap(),
            r#"{"segments":{"a":"1","b":"2"}}"#
        );
    }
}
