//! The Kubernetes side of the demo: the API objects the seed's flow
//! creates (PVC, PV, Pod, VolumeAttachment), kept as small JSON files in
//! the demo's work dir, and kubelet's real path layout.
//!
//! Names follow Kubernetes exactly where they are derived: the PV of a
//! dynamically provisioned claim is `pvc-<claim uid>`; a VolumeAttachment
//! is `csi-<sha256(volume handle + driver + node)>`; kubelet stages a CSI
//! filesystem volume at `plugins/kubernetes.io/csi/<driver>/<sha256(volume
//! handle)>/globalmount` and publishes it at `pods/<pod uid>/volumes/
//! kubernetes.io~csi/<pv>/mount`, writing a `vol_data.json` beside each.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::driver::DRIVER_NAME;

pub const NAMESPACE: &str = "default";
pub const CLAIM: &str = "demo-data";
pub const POD: &str = "demo";
pub const STORAGE_CLASS: &str = "haina";

/// The generated identities of one demo run.
#[derive(Debug, Clone)]
pub struct Names {
    pub claim_uid: String,
    pub pod_uid: String,
    /// `pvc-<claim uid>`: the PV name, and the CreateVolume name.
    pub pv: String,
}

impl Names {
    pub fn new() -> Self {
        let claim_uid = uuid();
        Self {
            pv: format!("pvc-{claim_uid}"),
            claim_uid,
            pod_uid: uuid(),
        }
    }
}

/// A random UUID from the kernel.
pub fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!(
                "{:08x}-0000-4000-8000-{:012x}",
                t.as_secs() as u32,
                t.subsec_nanos()
            )
        })
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The VolumeAttachment name the AttachDetach controller derives.
pub fn attachment_name(volume_handle: &str, node: &str) -> String {
    format!(
        "csi-{}",
        sha256_hex(&format!("{volume_handle}{DRIVER_NAME}{node}"))
    )
}

/// A Kubernetes quantity: `1Gi`, `512Mi`, or bytes.
pub fn quantity(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Where kubelet stages and publishes this volume.
#[derive(Debug, Clone)]
pub struct KubeletPaths {
    pub staging: PathBuf,
    pub target: PathBuf,
    /// Directories kubelet keeps `vol_data.json` in (staging side, pod side).
    pub data_dirs: Vec<PathBuf>,
}

pub fn kubelet_paths(kubelet: &Path, names: &Names, handle: &str, block: bool) -> KubeletPaths {
    if block {
        let csi = kubelet.join("plugins/kubernetes.io/csi/volumeDevices");
        KubeletPaths {
            staging: csi.join("staging").join(&names.pv),
            target: csi.join("publish").join(&names.pv).join(&names.pod_uid),
            data_dirs: Vec::new(),
        }
    } else {
        let staging = crate::cli::explain::kubelet_staging(kubelet, handle);
        let pod_dir = kubelet
            .join("pods")
            .join(&names.pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(&names.pv);
        KubeletPaths {
            data_dirs: vec![
                staging.parent().map(Path::to_path_buf).unwrap_or_default(),
                pod_dir.clone(),
            ],
            staging,
            target: pod_dir.join("mount"),
        }
    }
}

/// kubelet's `vol_data.json`.
pub fn vol_data(names: &Names, handle: &str, node: &str, attachment: &str) -> Value {
    json!({
        "attachmentID": attachment,
        "driverName": DRIVER_NAME,
        "nodeName": node,
        "specVolID": names.pv,
        "volumeHandle": handle,
        "volumeLifecycleMode": "Persistent",
    })
}

fn mode(block: bool) -> &'static str {
    if block { "Block" } else { "Filesystem" }
}

pub fn claim(names: &Names, size: u64, block: bool, bound: bool) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": quantity(size)}},
        "storageClassName": STORAGE_CLASS,
        "volumeMode": mode(block),
    });
    if bound {
        spec["volumeName"] = json!(names.pv);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": NAMESPACE, "uid": names.claim_uid},
        "spec": spec,
        "status": {"phase": if bound { "Bound" } else { "Pending" }},
    })
}

pub struct PvSpec<'a> {
    pub handle: &'a str,
    pub capacity: u64,
    pub fs_type: &'a str,
    pub block: bool,
    pub volume_attributes: &'a std::collections::HashMap<String, String>,
    pub topology: &'a [(String, String)],
}

pub fn volume(names: &Names, s: &PvSpec<'_>, bound: bool) -> Value {
    let mut csi = json!({
        "driver": DRIVER_NAME,
        "volumeHandle": s.handle,
        "volumeAttributes": s.volume_attributes.iter().collect::<std::collections::BTreeMap<_, _>>(),
    });
    if !s.block {
        csi["fsType"] = json!(s.fs_type);
    }
    let mut spec = json!({
        "capacity": {"storage": quantity(s.capacity)},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Delete",
        "storageClassName": STORAGE_CLASS,
        "volumeMode": mode(s.block),
        "csi": csi,
    });
    if !s.topology.is_empty() {
        let exprs: Vec<Value> = s
            .topology
            .iter()
            .map(|(k, v)| json!({"key": k, "operator": "In", "values": [v]}))
            .collect();
        spec["nodeAffinity"] =
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}});
    }
    if bound {
        spec["claimRef"] = json!({"kind": "PersistentVolumeClaim", "namespace": NAMESPACE,
            "name": CLAIM, "uid": names.claim_uid});
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": names.pv, "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER_NAME}},
        "spec": spec,
        "status": {"phase": if bound { "Bound" } else { "Available" }},
    })
}

pub fn pod(names: &Names, node: Option<&str>, block: bool) -> Value {
    let mut container = json!({"name": "app", "image": "busybox"});
    if block {
        container["volumeDevices"] = json!([{"name": "data", "devicePath": "/dev/xvda"}]);
    } else {
        container["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    }
    let mut spec = json!({
        "containers": [container],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE, "uid": names.pod_uid},
        "spec": spec,
        "status": {"phase": if node.is_some() { "Running" } else { "Pending" }},
    })
}

pub fn attachment(
    name: &str,
    names: &Names,
    node: &str,
    metadata: Option<&std::collections::HashMap<String, String>>,
) -> Value {
    let mut status = json!({"attached": metadata.is_some()});
    if let Some(m) = metadata {
        status["attachmentMetadata"] =
            json!(m.iter().collect::<std::collections::BTreeMap<_, _>>());
    }
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER_NAME, "nodeName": node,
                 "source": {"persistentVolumeName": names.pv}},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names() {
        assert_eq!(quantity(1 << 30), "1Gi");
        assert_eq!(quantity(512 << 20), "512Mi");
        assert_eq!(quantity(1000), "1000");
        let a = attachment_name("default.pvc-1", "node-a");
        assert!(a.starts_with("csi-") && a.len() == 4 + 64, "{a}");
        let n = Names::new();
        assert!(n.pv.starts_with("pvc-") && n.pv.len() == 40, "{}", n.pv);
        let p = kubelet_paths(Path::new("/k"), &n, "default.x", false);
        assert!(
            p.target
                .ends_with(format!("volumes/kubernetes.io~csi/{}/mount", n.pv))
        );
        assert!(p.staging.ends_with("globalmount"));
        let b = kubelet_paths(Path::new("/k"), &n, "default.x", true);
        assert!(
            b.target
                .starts_with("/k/plugins/kubernetes.io/csi/volumeDevices/publish")
        );
    }
}
