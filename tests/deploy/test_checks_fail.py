"""The wiring checks must fail on broken manifests: each case breaks one
thing in a copy of the committed default manifest and expects the named
check to reject it."""

from __future__ import annotations

import copy

import pytest

import checks
import manifests as m


def base(name: str = "haina.yaml") -> list[dict]:
    return copy.deepcopy(m.load_file(m.MANIFESTS / name))


def container(docs, kind, name):
    return m.containers(m.one(docs, kind))[name]


def set_arg(c: dict, flag: str, value: str | None) -> None:
    """Replace --flag[=...] in c's args (value None removes it)."""
    args = [a for a in c["args"] if not (a == f"--{flag}" or a.startswith(f"--{flag}="))]
    if value is not None:
        args.append(f"--{flag}={value}" if value != "" else f"--{flag}")
    c["args"] = args


def mount(c: dict, name: str) -> dict:
    return next(vm for vm in c["volumeMounts"] if vm["name"] == name)


def break_sidecar_address(docs):
    set_arg(container(docs, "Deployment", "csi-attacher"), "csi-address", "/run/csi/socket")


def break_sidecar_mount(docs):
    mount(container(docs, "Deployment", "csi-resizer"), "socket-dir")["mountPath"] = "/plugin"


def break_endpoint(docs):
    set_arg(container(docs, "DaemonSet", "haina"), "endpoint", "unix:///plugin/csi.sock")


def break_registration_path(docs):
    set_arg(container(docs, "DaemonSet", "node-driver-registrar"), "kubelet-registration-path",
            "/var/lib/kubelet/plugins/haina/csi.sock")


def break_registration_dir(docs):
    ds = m.one(docs, "DaemonSet")
    m.volumes(ds)["registration-dir"]["hostPath"]["path"] = "/var/lib/kubelet/plugins"


def break_socket_hostpath(docs):
    ds = m.one(docs, "DaemonSet")
    m.volumes(ds)["socket-dir"]["hostPath"]["path"] = "/var/lib/kubelet/plugins/other.csi.dev"


def break_propagation(docs):
    del mount(container(docs, "DaemonSet", "haina"), "kubelet-dir")["mountPropagation"]


def break_data_propagation(docs):
    mount(container(docs, "DaemonSet", "haina"), "data-dir")["mountPropagation"] = "HostToContainer"


def break_data_hostpath(docs):
    ds = m.one(docs, "DaemonSet")
    m.volumes(ds)["data-dir"].pop("hostPath")
    m.volumes(ds)["data-dir"]["emptyDir"] = {}


def break_privileged(docs):
    container(docs, "DaemonSet", "haina")["securityContext"]["privileged"] = False


def break_modules_rw(docs):
    mount(container(docs, "DaemonSet", "haina"), "lib-modules").pop("readOnly")


def break_leader_election(docs):
    set_arg(container(docs, "Deployment", "csi-snapshotter"), "leader-election", None)


def break_lease_rbac(docs):
    role = next(r for r in m.of_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election"))
    role["rules"][0]["verbs"] = ["get", "list", "watch"]


def break_topology_gate(docs):
    set_arg(container(docs, "Deployment", "csi-provisioner"), "feature-gates", "Foo=true")


def break_extra_metadata(docs):
    set_arg(container(docs, "Deployment", "csi-provisioner"), "extra-create-metadata", None)


def break_two_provisioners(docs):
    ds = m.one(docs, "DaemonSet")
    prov = copy.deepcopy(container(docs, "Deployment", "csi-provisioner"))
    m.pod_spec(ds)["containers"].append(prov)


def break_services_flag(docs):
    set_arg(container(docs, "Deployment", "haina"), "services", "node")


def break_csidriver_name(docs):
    m.one(docs, "CSIDriver")["metadata"]["name"] = "haina.csi.example"


def break_attach_required(docs):
    m.one(docs, "CSIDriver")["spec"]["attachRequired"] = False


def break_sc_provisioner(docs):
    m.one(docs, "StorageClass")["provisioner"] = "haina"


def break_vsc_driver(docs):
    m.one(docs, "VolumeSnapshotClass")["driver"] = "hostpath.csi.k8s.io"


def break_vsc_field(docs):
    m.one(docs, "VolumeSnapshotClass")["parameter"] = {}


def break_sc_pool(docs):
    m.one(docs, "StorageClass")["parameters"]["pool"] = "fast"


def break_metrics_port(docs):
    set_arg(container(docs, "DaemonSet", "haina"), "metrics-address", "0.0.0.0:9090")


def break_health_port(docs):
    set_arg(container(docs, "Deployment", "liveness-probe"), "health-port", "9808")


def break_metrics_service(docs):
    svc = next(s for s in m.of_kind(docs, "Service") if s["metadata"]["name"] == "haina-node-metrics")
    svc["spec"]["ports"][0]["targetPort"] = 9808 + 1


def break_provisioner_rbac(docs):
    role = next(r for r in m.of_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-provisioner"))
    role["rules"] = [r for r in role["rules"] if "persistentvolumes" not in r["resources"]]


def break_service_account(docs):
    m.pod_spec(m.one(docs, "Deployment"))["serviceAccountName"] = "default"


def break_node_id(docs):
    set_arg(container(docs, "DaemonSet", "haina"), "node-id", "node-1")


def break_image_tag(docs):
    container(docs, "Deployment", "csi-resizer")["image"] = "registry.k8s.io/sig-storage/csi-resizer:latest"


def break_config_key(docs):
    set_arg(container(docs, "Deployment", "haina"), "config", "/etc/haina/haina.toml")


CASES = [
    (break_sidecar_address, checks.check_socket_wiring),
    (break_sidecar_mount, checks.check_socket_wiring),
    (break_endpoint, checks.check_socket_wiring),
    (break_registration_path, checks.check_registrar),
    (break_registration_dir, checks.check_registrar),
    (break_socket_hostpath, checks.check_registrar),
    (break_socket_hostpath, checks.check_driver_name_everywhere),
    (break_propagation, checks.check_node_plugin),
    (break_data_propagation, checks.check_node_plugin),
    (break_data_hostpath, checks.check_node_plugin),
    (break_privileged, checks.check_node_plugin),
    (break_modules_rw, checks.check_node_plugin),
    (break_node_id, checks.check_node_plugin),
    (break_leader_election, checks.check_controller_sidecars),
    (break_lease_rbac, checks.check_leader_election_rbac),
    (break_topology_gate, checks.check_controller_sidecars),
    (break_extra_metadata, checks.check_controller_sidecars),
    (break_two_provisioners, checks.check_controller_sidecars),
    (break_services_flag, checks.check_controller_sidecars),
    (break_csidriver_name, checks.check_csidriver),
    (break_csidriver_name, checks.check_driver_name_everywhere),
    (break_attach_required, checks.check_csidriver),
    (break_sc_provisioner, checks.check_driver_name_everywhere),
    (break_vsc_driver, checks.check_driver_name_everywhere),
    (break_vsc_field, checks.check_volume_snapshot_classes),
    (break_sc_pool, checks.check_storage_classes),
    (break_provisioner_rbac, checks.check_sidecar_rbac),
    (break_service_account, checks.check_leader_election_rbac),
    (break_image_tag, checks.check_images_pinned),
    (break_config_key, checks.check_storage_classes),
]


@pytest.mark.parametrize("breaker,check", CASES, ids=lambda f: f.__name__)
def test_check_catches(breaker, check):
    docs = base()
    check(docs)  # passes on the committed manifest...
    breaker(docs)
    with pytest.raises(AssertionError):
        check(docs)  # ...and fails once it is broken


@pytest.mark.parametrize("breaker", [break_metrics_port, break_health_port, break_metrics_service],
                         ids=lambda f: f.__name__)
def test_metrics_check_catches(breaker):
    docs = base()
    checks.check_metrics(docs, m.METRICS_PORT)
    breaker(docs)
    with pytest.raises(AssertionError):
        checks.check_metrics(docs, m.METRICS_PORT)


def test_node_deployment_checks_catch():
    docs = base("haina-local-node.yaml")
    checks.check_controller_sidecars(docs)
    set_arg(container(docs, "DaemonSet", "csi-provisioner"), "leader-election", "")
    with pytest.raises(AssertionError, match="must not elect"):
        checks.check_controller_sidecars(docs)
    docs = base("haina-local-node.yaml")
    container(docs, "DaemonSet", "csi-provisioner")["env"] = []
    with pytest.raises(AssertionError, match="NODE_NAME"):
        checks.check_controller_sidecars(docs)


def test_schema_validation_catches():
    """The schema step rejects wrong types, unknown fields (strict) and
    unknown kinds, and skips only the named CRD kinds."""
    from validate_schemas import CRD_KINDS, validate_docs

    docs = base()
    ok, skipped, errors = validate_docs(docs, "1.30.0", "haina.yaml")
    assert not errors and ok == len(docs) - skipped and skipped == 1

    bad = base()
    m.pod_spec(m.one(bad, "DaemonSet"))["hostNetwrk"] = True              # typo: unknown field
    m.one(bad, "Deployment")["spec"]["replicas"] = "one"                  # wrong type
    m.one(bad, "CSIDriver")["spec"]["volumeLifecycleModes"] = "Persistent"  # not a list
    bad.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    _, _, errors = validate_docs(bad, "1.30.0", "bad")
    text = "\n".join(errors)
    assert "hostNetwrk" in text, text
    assert "DaemonSet" in text and "Deployment" in text and "CSIDriver" in text and "Widget" in text, text
    assert len(errors) == 4, text
    assert {k for _, k in CRD_KINDS} == {"VolumeSnapshotClass", "ServiceMonitor"}
