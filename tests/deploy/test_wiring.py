"""Wiring tests over the committed plain manifests in deploy/kubernetes and
over extra renderings of the chart."""

from __future__ import annotations

import pytest

import checks
import manifests as m
from validate_schemas import validate_docs


# ---------------------------------------------------------------- committed manifests

@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_committed(check, docs):
    check(docs)


def test_metrics_port(docs):
    checks.check_metrics(docs, m.METRICS_PORT)


def test_data_dir(docs):
    checks.check_node_plugin(docs, data_dir=m.DATA_DIR)
    for w in m.workloads(docs):
        assert m.flag(m.haina_container(w), "data-dir") == m.DATA_DIR


def test_modes(rendering):
    """Which sidecar runs where in each committed manifest."""
    name, docs = rendering
    deploy, ds = m.one(docs, "Deployment"), m.one(docs, "DaemonSet")
    ctrl, node = m.containers(deploy), m.containers(ds)
    assert m.services(ctrl["haina"]) == {"controller"}
    assert {"csi-snapshotter", "csi-resizer", "liveness-probe"} <= set(ctrl)
    assert {"node-driver-registrar", "liveness-probe"} <= set(node)
    ctrl_data = m.volumes(deploy)["data-dir"]
    if name == "haina-local-node.yaml":
        # Only the node's own haina uses the host data dir.
        assert "emptyDir" in ctrl_data, ctrl_data
        assert m.services(node["haina"]) == {"controller", "node"}
        assert {"csi-provisioner", "csi-attacher"} <= set(node)
        assert not {"csi-provisioner", "csi-attacher"} & set(ctrl)
        prov = node["csi-provisioner"]
        assert m.flag(prov, "node-deployment") == "true"
        assert m.flag(prov, "leader-election") is None
        assert m.env_field_ref(prov, "NODE_NAME") == "spec.nodeName"
        assert m.flag(node["csi-attacher"], "leader-election") == "true"
    else:
        # Local images the controller creates must be where the node plugin looks.
        assert ctrl_data.get("hostPath", {}).get("path") == m.DATA_DIR, ctrl_data
        assert m.services(node["haina"]) == {"node"}
        assert {"csi-provisioner", "csi-attacher"} <= set(ctrl)
        assert not {"csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer"} & set(node)


def test_rbd_manifest():
    docs = m.load_file(m.MANIFESTS / "haina-rbd.yaml")
    pools = checks.pool_config(docs)["pools"]
    assert pools == {"ceph": {
        "kind": "rbd",
        "monitors": ["10.0.0.1:6789"],
        "rados_pool": "kube",
        "image_features": ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"],
        "mounter": "auto",
    }}
    sc = m.one(docs, "StorageClass")
    assert sc["metadata"]["name"] == "haina-rbd"
    p = sc["parameters"]
    assert p["pool"] == "ceph"
    for kind in checks.SECRET_PARAMS:
        assert p[f"csi.storage.k8s.io/{kind}-secret-name"] == "haina-rbd-secret"
        assert p[f"csi.storage.k8s.io/{kind}-secret-namespace"] == m.NAMESPACE
    vsc = m.one(docs, "VolumeSnapshotClass")
    assert vsc["parameters"]["csi.storage.k8s.io/snapshotter-secret-name"] == "haina-rbd-secret"
    assert vsc["parameters"]["csi.storage.k8s.io/snapshotter-secret-namespace"] == m.NAMESPACE
    assert not m.of_kind(docs, "Secret"), "the plain RBD manifest must not ship a Secret with a placeholder key"


def test_default_manifest():
    docs = m.load_file(m.MANIFESTS / "haina.yaml")
    assert checks.pool_config(docs)["pools"] == {"default": {"kind": "local"}}
    sc = m.one(docs, "StorageClass")
    assert (sc["metadata"]["name"], sc["parameters"]["pool"], sc["volumeBindingMode"]) == \
        ("haina-local", "default", "WaitForFirstConsumer")
    assert m.one(docs, "VolumeSnapshotClass")["metadata"]["name"] == "haina-local-snapshot"
    ns = m.one(docs, "Namespace")
    assert ns["metadata"]["name"] == m.NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert not m.of_kind(docs, "ServiceMonitor"), "ServiceMonitor must be off by default"


def test_volume_snapshot_classes(docs):
    checks.check_volume_snapshot_classes(docs)


# ---------------------------------------------------------------- chart renderings

def test_render_matches_committed(helm):
    """The committed manifests are what the chart renders (the script diffs
    the text too; this compares objects)."""
    for name, values in m.RENDERINGS.items():
        assert m.render(values) == m.load_file(m.MANIFESTS / name), f"{name} is stale"


def test_custom_kubelet_dir(helm):
    kd = "/var/lib/k0s/kubelet"
    docs = m.render(sets=[f"kubeletDir={kd}"])
    checks.check_registrar(docs, kubelet_dir=kd)
    checks.check_node_plugin(docs, kubelet_dir=kd)
    checks.check_driver_name_everywhere(docs, kubelet_dir=kd)
    checks.check_socket_wiring(docs)
    text = str(docs)
    assert "/var/lib/kubelet" not in text, "a /var/lib/kubelet path ignores .Values.kubeletDir"


def test_custom_data_dir_and_metrics_port(helm):
    docs = m.render(sets=["dataDir=/srv/haina", "metrics.port=9900"])
    checks.check_node_plugin(docs, data_dir="/srv/haina")
    checks.check_metrics(docs, 9900)


def test_attach_limit_and_feature_gates(helm):
    """node.maxVolumesPerNode reaches haina serve (the scheduler's attach
    limit); the group snapshot and VolumeAttributesClass gates are values."""
    docs = m.render(sets=[
        "node.maxVolumesPerNode=16",
        "sidecars.snapshotter.featureGates=CSIVolumeGroupSnapshot=true",
        "sidecars.resizer.featureGates=VolumeAttributesClass=true",
    ])
    text = str(docs)
    assert "--max-volumes-per-node=16" in text
    assert "--feature-gates=CSIVolumeGroupSnapshot=true" in text
    assert "--feature-gates=VolumeAttributesClass=true" in text
    assert "--max-volumes-per-node" not in str(m.render()), "0 (no limit) passes no flag"


def test_service_monitor(helm):
    docs = m.render(sets=["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"])
    smon = m.one(docs, "ServiceMonitor")
    assert smon["apiVersion"] == "monitoring.coreos.com/v1"
    assert smon["metadata"]["labels"]["release"] == "prom"
    assert smon["spec"]["namespaceSelector"]["matchNames"] == [m.NAMESPACE]
    sel = smon["spec"]["selector"]["matchLabels"]
    selected = [s for s in m.of_kind(docs, "Service")
                if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
    assert sorted(s["metadata"]["name"] for s in selected) == ["haina-controller-metrics", "haina-node-metrics"]
    port_names = {p["name"] for s in selected for p in s["spec"]["ports"]}
    for ep in smon["spec"]["endpoints"]:
        assert ep["port"] in port_names and ep["path"] == "/metrics"
    checks.check_metrics(docs, m.METRICS_PORT)


def test_service_monitor_needs_services(helm):
    with pytest.raises(m.HelmError, match="metrics.service.enabled"):
        m.render(sets=["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"])


def test_rbd_secret_created(helm):
    docs = m.render(["ci/rbd-values.yaml"], sets=[
        "storageClasses.rbd.secret.create=true",
        "storageClasses.rbd.secret.userID=kubernetes",
        "storageClasses.rbd.secret.userKey=AQBfakekeyfortests==",
        "storageClasses.rbd.secret.namespace=ceph-secrets",
    ])
    secret = m.one(docs, "Secret")
    assert secret["metadata"]["namespace"] == "ceph-secrets"
    assert secret["stringData"] == {"userID": "kubernetes", "userKey": "AQBfakekeyfortests=="}
    sc = m.one(docs, "StorageClass")
    for kind in checks.SECRET_PARAMS:
        assert sc["parameters"][f"csi.storage.k8s.io/{kind}-secret-name"] == secret["metadata"]["name"]
        assert sc["parameters"][f"csi.storage.k8s.io/{kind}-secret-namespace"] == "ceph-secrets"
    checks.check_storage_classes(docs)


def test_rbd_secret_needs_key(helm):
    with pytest.raises(m.HelmError, match="userID and userKey"):
        m.render(["ci/rbd-values.yaml"], sets=["storageClasses.rbd.secret.create=true"])


def test_both_pools(helm):
    """Local and RBD side by side, with every class."""
    docs = m.render(sets=[
        "config.pools.ceph.kind=rbd", "config.pools.ceph.monitors={10.0.0.1:6789,10.0.0.2:6789}",
        "config.pools.ceph.rados_pool=kube", "config.pools.ceph.mounter=nbd",
        "storageClasses.rbd.create=true", "volumeSnapshotClasses.rbd.create=true",
    ])
    pools = checks.pool_config(docs)["pools"]
    assert pools["default"] == {"kind": "local"}
    assert pools["ceph"]["monitors"] == ["10.0.0.1:6789", "10.0.0.2:6789"]
    assert len(m.of_kind(docs, "StorageClass")) == 2 and len(m.of_kind(docs, "VolumeSnapshotClass")) == 2
    for check in checks.ALL_CHECKS:
        check(docs)


def test_toml_escaping(helm):
    odd = {"kind": "local", "path": '/data/"quoted" dir\\x <&>\tü', "size_gib": 10, "sparse": True,
           "features": ["a", 'b"c']}
    docs = m.render(values={"config": {"pools": {"odd": odd}}})
    assert checks.pool_config(docs)["pools"]["odd"] == odd


@pytest.mark.parametrize("sets,message", [
    (["config.pools.Bad_Name.kind=local"], "pool name"),
    (["config.pools.nokind.path=/x"], "kind is required"),
    (["storageClasses.local.pool=missing"], "not a pool in config.pools"),
])
def test_chart_rejects(helm, sets, message):
    with pytest.raises(m.HelmError, match=message):
        m.render(sets=sets)


def test_node_deployment_without_immediate_binding(helm):
    docs = m.render(["ci/local-node-values.yaml"], sets=["localPools.immediateBinding=false"])
    prov = m.containers(m.one(docs, "DaemonSet"))["csi-provisioner"]
    assert m.flag(prov, "node-deployment-immediate-binding") == "false"
    for check in checks.ALL_CHECKS:
        check(docs)


def test_rbac_follows_mode(helm):
    """The provisioner and attacher roles go to whoever runs those sidecars."""
    central = m.load_file(m.MANIFESTS / "haina.yaml")
    per_node = m.load_file(m.MANIFESTS / "haina-local-node.yaml")
    ns = m.NAMESPACE
    assert m.can(central, "haina-controller", ns, "create", "", "persistentvolumes")
    assert not m.can(central, "haina-node", ns, "create", "", "persistentvolumes")
    assert m.can(per_node, "haina-node", ns, "create", "", "persistentvolumes")
    assert m.can(per_node, "haina-node", ns, "patch", "storage.k8s.io", "volumeattachments/status")
    assert not m.can(per_node, "haina-controller", ns, "create", "", "persistentvolumes")
    assert m.can(per_node, "haina-node", ns, "update", "coordination.k8s.io", "leases", in_namespace=ns)


def test_variants_pass_schemas(helm):
    """Chart options not in the committed manifests still produce valid objects."""
    variants = [
        ["metrics.serviceMonitor.enabled=true"],
        ["controller.dataDirOnHost=false", "node.hostNetwork=false", "imagePullSecrets[0].name=regcred",
         "controller.nodeSelector.storage=yes", "node.resources.requests.cpu=100m"],
        ["storageClasses.local.mountOptions={noatime}", "storageClasses.local.mkfsOptions=-E nodiscard",
         "storageClasses.local.isDefault=true", "volumeSnapshotClasses.local.isDefault=true"],
    ]
    for sets in variants:
        docs = m.render(sets=sets)
        _, _, errors = validate_docs(docs, "1.30.0", " ".join(sets))
        assert not errors, errors
        for check in checks.ALL_CHECKS:
            check(docs)


def test_notes(helm):
    """NOTES.txt renders and tells RBD users about the Secret."""
    import subprocess
    out = subprocess.run(
        [helm, "install", "--dry-run=client", m.RELEASE, str(m.CHART), "--namespace", m.NAMESPACE,
         "-f", str(m.CHART / "ci/rbd-values.yaml")],
        capture_output=True, text=True, check=True).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "haina.csi.dev" in notes and "centralized" in notes
    assert "create secret generic haina-rbd-secret" in notes
