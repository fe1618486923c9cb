"""Wiring checks over a set of rendered objects. Each check raises
AssertionError with a message naming what is wrong; test_wiring.py runs them
on every committed manifest and on extra chart renderings, and
test_checks_fail.py proves each one fails on a broken manifest."""

from __future__ import annotations

import re
import tomllib

from manifests import (
    CONTROLLER_SIDECARS,
    DRIVER,
    KUBELET_DIR,
    args_of,
    can,
    containers,
    env_field_ref,
    flag,
    haina_container,
    host_path_of,
    of_kind,
    one,
    pod_spec,
    resolve_mount,
    services,
    socket_path,
    workloads,
)


def wl_name(w: dict) -> str:
    return f"{w['kind']}/{w['metadata']['name']}"


def sidecars_with_csi_address(w: dict) -> dict[str, dict]:
    return {n: c for n, c in containers(w).items() if flag(c, "csi-address") is not None}


# ---------------------------------------------------------------- driver

def check_csidriver(docs: list[dict], driver: str = DRIVER) -> None:
    d = one(docs, "CSIDriver")
    assert d["metadata"]["name"] == driver, f"CSIDriver is named {d['metadata']['name']!r}, want {driver!r}"
    spec = d["spec"]
    assert spec.get("attachRequired") is True, "CSIDriver.attachRequired must be true (PUBLISH_UNPUBLISH_VOLUME)"
    assert spec.get("podInfoOnMount") is False, "CSIDriver.podInfoOnMount must be false"
    assert spec.get("fsGroupPolicy") == "File", f"CSIDriver.fsGroupPolicy is {spec.get('fsGroupPolicy')!r}, want File"
    assert spec.get("volumeLifecycleModes") == ["Persistent"], \
        f"CSIDriver.volumeLifecycleModes is {spec.get('volumeLifecycleModes')!r}, want [Persistent]"


def check_driver_name_everywhere(docs: list[dict], driver: str = DRIVER, kubelet_dir: str = KUBELET_DIR) -> None:
    csidriver = one(docs, "CSIDriver")["metadata"]["name"]
    assert csidriver == driver, f"CSIDriver {csidriver!r} != {driver!r}"
    scs = of_kind(docs, "StorageClass")
    assert scs, "no StorageClass rendered"
    for sc in scs:
        assert sc["provisioner"] == driver, \
            f"StorageClass {sc['metadata']['name']}: provisioner {sc['provisioner']!r} != {driver!r}"
    for vsc in of_kind(docs, "VolumeSnapshotClass"):
        assert vsc["driver"] == driver, \
            f"VolumeSnapshotClass {vsc['metadata']['name']}: driver {vsc['driver']!r} != {driver!r}"
    ds = one(docs, "DaemonSet")
    plugin_dir = f"{kubelet_dir}/plugins/{driver}"
    sock_vol = resolve_mount(haina_container(ds), socket_path(haina_container(ds)))
    assert sock_vol is not None, "haina's socket is on no volume in the DaemonSet"
    assert host_path_of(ds, sock_vol.volume) == plugin_dir, \
        f"node socket dir is hostPath {host_path_of(ds, sock_vol.volume)!r}, want {plugin_dir!r}"


# ---------------------------------------------------------------- sockets

def check_socket_wiring(docs: list[dict]) -> None:
    """Every sidecar's --csi-address is haina's --endpoint socket, on the same
    volume mounted at the same path."""
    ws = workloads(docs)
    assert ws, "no workloads rendered"
    for w in ws:
        haina = haina_container(w)
        sock = socket_path(haina)
        hm = resolve_mount(haina, sock)
        assert hm is not None, f"{wl_name(w)}: haina's socket {sock} is on no volumeMount"
        vol = pod_spec(w)["volumes"]
        assert any(v["name"] == hm.volume for v in vol), f"{wl_name(w)}: volume {hm.volume} is not defined"
        sidecars = sidecars_with_csi_address(w)
        assert sidecars, f"{wl_name(w)}: no sidecar talks to haina"
        for name, c in sidecars.items():
            addr = flag(c, "csi-address")
            addr = addr[len("unix://"):] if addr.startswith("unix://") else addr
            assert addr == sock, f"{wl_name(w)}: {name} --csi-address={addr}, haina listens on {sock}"
            sm = resolve_mount(c, addr)
            assert sm is not None, f"{wl_name(w)}: {name} does not mount the directory of {addr}"
            assert (sm.volume, sm.mount_path) == (hm.volume, hm.mount_path), (
                f"{wl_name(w)}: {name} reaches {addr} through volume {sm.volume} at {sm.mount_path}, "
                f"haina through {hm.volume} at {hm.mount_path}")


def check_registrar(docs: list[dict], driver: str = DRIVER, kubelet_dir: str = KUBELET_DIR) -> None:
    ds = one(docs, "DaemonSet")
    reg = containers(ds).get("node-driver-registrar")
    assert reg is not None, "DaemonSet has no node-driver-registrar"
    want = f"{kubelet_dir}/plugins/{driver}/csi.sock"
    got = flag(reg, "kubelet-registration-path")
    assert got == want, f"--kubelet-registration-path={got}, want {want}"
    # The path kubelet dials must be where haina's socket is on the host.
    haina = haina_container(ds)
    hm = resolve_mount(haina, socket_path(haina))
    host_sock = f"{host_path_of(ds, hm.volume)}/{hm.sub}"
    assert host_sock == want, f"haina's socket is {host_sock} on the host, registrar announces {want}"
    # Registration socket dir.
    rm = resolve_mount(reg, "/registration")
    assert rm is not None and rm.mount_path == "/registration", "registrar does not mount /registration"
    reg_host = host_path_of(ds, rm.volume)
    assert reg_host == f"{kubelet_dir}/plugins_registry", \
        f"/registration is hostPath {reg_host}, want {kubelet_dir}/plugins_registry"
    assert env_field_ref(reg, "KUBE_NODE_NAME") == "spec.nodeName", "registrar needs KUBE_NODE_NAME from spec.nodeName"


# ---------------------------------------------------------------- node plugin

def check_node_plugin(docs: list[dict], kubelet_dir: str = KUBELET_DIR, data_dir: str | None = None) -> None:
    ds = one(docs, "DaemonSet")
    haina = haina_container(ds)
    sc = haina.get("securityContext", {})
    assert sc.get("privileged") is True, "node haina container must be privileged"
    assert "node" in services(haina), f"node haina serves {sorted(services(haina))}, not node"

    km = resolve_mount(haina, kubelet_dir)
    assert km is not None and km.mount_path == kubelet_dir, f"node haina does not mount {kubelet_dir} at the same path"
    assert host_path_of(ds, km.volume) == kubelet_dir, \
        f"{kubelet_dir} comes from hostPath {host_path_of(ds, km.volume)}"
    assert km.mount.get("mountPropagation") == "Bidirectional", \
        f"{kubelet_dir} mount propagation is {km.mount.get('mountPropagation')!r}, want Bidirectional"

    dd = flag(haina, "data-dir")
    assert dd, "node haina has no --data-dir"
    if data_dir is not None:
        assert dd == data_dir, f"--data-dir={dd}, want {data_dir}"
    dm = resolve_mount(haina, dd)
    assert dm is not None and dm.mount_path == dd, f"--data-dir {dd} is not a volumeMount of its own"
    assert host_path_of(ds, dm.volume) is not None, f"data dir {dd} is not a hostPath (images would not survive)"
    assert dm.mount.get("mountPropagation") == "Bidirectional", \
        f"data dir mount propagation is {dm.mount.get('mountPropagation')!r}, want Bidirectional"

    for path, ro in (("/dev", False), ("/sys", False), ("/lib/modules", True)):
        mm = resolve_mount(haina, path)
        assert mm is not None and mm.mount_path == path, f"node haina does not mount host {path}"
        assert host_path_of(ds, mm.volume) == path, f"{path} is not the host's {path}"
        if ro:
            assert mm.mount.get("readOnly") is True, f"{path} must be mounted read-only"

    cfg = flag(haina, "config")
    assert cfg and resolve_mount(haina, cfg) is not None, f"--config={cfg} is not on a mounted volume"
    assert flag(haina, "node-id") == "$(NODE_ID)" and env_field_ref(haina, "NODE_ID") == "spec.nodeName", \
        "node haina --node-id must come from the downward API spec.nodeName"


# ---------------------------------------------------------------- sidecars

def sidecar_locations(docs: list[dict], name: str) -> list[dict]:
    return [w for w in workloads(docs) if name in containers(w)]


def check_controller_sidecars(docs: list[dict]) -> None:
    """Each controller sidecar runs in exactly one workload, next to a haina
    that serves the controller service, with leader election unless it is a
    --node-deployment provisioner; the provisioner has the topology, metadata
    and fstype flags."""
    for name in CONTROLLER_SIDECARS:
        where = sidecar_locations(docs, name)
        assert len(where) == 1, f"{name} runs in {[wl_name(w) for w in where]}: want exactly one workload"
        w = where[0]
        c = containers(w)[name]
        assert "controller" in services(haina_container(w)), \
            f"{name} in {wl_name(w)} talks to a haina that does not serve the controller service"
        node_deploy = flag(c, "node-deployment") == "true"
        if name == "csi-provisioner" and node_deploy:
            assert w["kind"] == "DaemonSet", "--node-deployment provisioner must run in the DaemonSet"
            assert flag(c, "leader-election") in (None, "false"), "--node-deployment provisioner must not elect a leader"
            assert env_field_ref(c, "NODE_NAME") == "spec.nodeName", "--node-deployment needs NODE_NAME=spec.nodeName"
        else:
            assert flag(c, "leader-election") == "true", f"{name} in {wl_name(w)} runs without --leader-election"
    prov = containers(sidecar_locations(docs, "csi-provisioner")[0])["csi-provisioner"]
    gates = (flag(prov, "feature-gates") or "").split(",")
    assert "Topology=true" in gates, f"provisioner --feature-gates={flag(prov, 'feature-gates')}, want Topology=true"
    assert flag(prov, "extra-create-metadata") == "true", "provisioner needs --extra-create-metadata"
    assert flag(prov, "default-fstype") == "ext4", f"provisioner --default-fstype={flag(prov, 'default-fstype')}"
    snap = containers(sidecar_locations(docs, "csi-snapshotter")[0])["csi-snapshotter"]
    assert flag(snap, "extra-create-metadata") == "true", "snapshotter needs --extra-create-metadata"
    gates = (flag(snap, "feature-gates") or "").split(",")
    assert any(g.startswith("CSIVolumeGroupSnapshot=") for g in gates), \
        "the snapshotter must say whether group snapshots are on (never wait for CRDs by default)"


def check_leader_election_rbac(docs: list[dict]) -> None:
    """Every pod with a leader-electing sidecar may manage Leases in its
    namespace, and every ServiceAccount a pod uses exists."""
    sas = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind(docs, "ServiceAccount")}
    for w in workloads(docs):
        ns = w["metadata"]["namespace"]
        sa = pod_spec(w).get("serviceAccountName")
        assert (ns, sa) in sas, f"{wl_name(w)} uses ServiceAccount {ns}/{sa}, which is not rendered"
        electing = [n for n, c in containers(w).items() if flag(c, "leader-election") == "true"]
        for verb in ("get", "create", "update"):
            if electing:
                assert can(docs, sa, ns, verb, "coordination.k8s.io", "leases", in_namespace=ns), \
                    f"{wl_name(w)} ({', '.join(electing)}) elects a leader but {sa} cannot {verb} leases in {ns}"


SIDECAR_PERMISSIONS = {
    "csi-provisioner": [("create", "", "persistentvolumes"), ("delete", "", "persistentvolumes"),
                        ("update", "", "persistentvolumeclaims"), ("get", "", "secrets"),
                        ("list", "storage.k8s.io", "csinodes"), ("get", "", "nodes"),
                        ("get", "snapshot.storage.k8s.io", "volumesnapshotcontents")],
    "csi-attacher": [("patch", "storage.k8s.io", "volumeattachments"),
                     ("patch", "storage.k8s.io", "volumeattachments/status"), ("get", "", "secrets")],
    "csi-snapshotter": [("update", "snapshot.storage.k8s.io", "volumesnapshotcontents"),
                        ("patch", "snapshot.storage.k8s.io", "volumesnapshotcontents/status"),
                        ("watch", "snapshot.storage.k8s.io", "volumesnapshotclasses"), ("get", "", "secrets")],
    "csi-resizer": [("patch", "", "persistentvolumes"), ("patch", "", "persistentvolumeclaims/status"),
                    ("watch", "", "pods"), ("get", "", "secrets")],
}


def check_sidecar_rbac(docs: list[dict]) -> None:
    for name, perms in SIDECAR_PERMISSIONS.items():
        for w in sidecar_locations(docs, name):
            ns, sa = w["metadata"]["namespace"], pod_spec(w)["serviceAccountName"]
            for verb, group, resource in perms:
                assert can(docs, sa, ns, verb, group, resource), \
                    f"{name} in {wl_name(w)} runs as {sa}, which cannot {verb} {group or 'core'}/{resource}"


# ---------------------------------------------------------------- metrics

def check_metrics(docs: list[dict], port: int) -> None:
    for w in workloads(docs):
        haina = haina_container(w)
        addr = flag(haina, "metrics-address")
        assert addr and addr.rsplit(":", 1)[-1] == str(port), f"{wl_name(w)}: --metrics-address={addr}, want port {port}"
        ports = {p["name"]: p["containerPort"] for p in haina.get("ports", [])}
        assert ports.get("metrics") == port, f"{wl_name(w)}: haina's 'metrics' containerPort is {ports.get('metrics')}"
        # The liveness-probe sidecar serves the 'healthz' port haina's probe uses.
        lp = containers(w).get("liveness-probe")
        assert lp is not None, f"{wl_name(w)}: no liveness-probe sidecar"
        health = int(flag(lp, "health-port") or 9808)
        assert ports.get("healthz") == health, \
            f"{wl_name(w)}: liveness-probe listens on {health}, haina's 'healthz' port is {ports.get('healthz')}"
        assert health != port, f"{wl_name(w)}: liveness-probe --health-port {health} collides with metrics {port}"
        probe = haina.get("livenessProbe", {}).get("httpGet", {})
        assert probe.get("port") == "healthz" and probe.get("path") == "/healthz", \
            f"{wl_name(w)}: haina livenessProbe is {probe}"
        # No two containers of a pod declare the same port.
        all_ports = [p["containerPort"] for c in containers(w).values() for p in c.get("ports", [])]
        assert len(all_ports) == len(set(all_ports)), f"{wl_name(w)}: duplicate container ports {all_ports}"

    services_ = [s for s in of_kind(docs, "Service") if s["metadata"]["labels"].get("haina.csi.dev/metrics") == "true"]
    assert len(services_) == len(workloads(docs)), \
        f"{len(services_)} metrics Services for {len(workloads(docs))} workloads"
    for s in services_:
        sel = s["spec"]["selector"]
        matched = [w for w in workloads(docs)
                   if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        assert len(matched) == 1, f"Service {s['metadata']['name']} selects {[wl_name(w) for w in matched]}"
        sp = s["spec"]["ports"][0]
        assert sp["name"] == "metrics" and sp["port"] == port and sp["targetPort"] == "metrics", \
            f"Service {s['metadata']['name']} port is {sp}"


# ---------------------------------------------------------------- config & classes

def pool_config(docs: list[dict]) -> dict:
    cms = [c for c in of_kind(docs, "ConfigMap") if "config.toml" in c.get("data", {})]
    assert len(cms) == 1, f"{len(cms)} ConfigMaps hold config.toml"
    cfg = tomllib.loads(cms[0]["data"]["config.toml"])
    for w in workloads(docs):
        vols = {v["name"]: v for v in pod_spec(w)["volumes"]}
        haina = haina_container(w)
        cm = resolve_mount(haina, flag(haina, "config"))
        assert cm is not None and vols[cm.volume].get("configMap", {}).get("name") == cms[0]["metadata"]["name"], \
            f"{wl_name(w)}: --config is not the rendered ConfigMap"
        assert cm.sub == "config.toml", f"{wl_name(w)}: --config names {cm.sub}, the ConfigMap key is config.toml"
    return cfg


SECRET_PARAMS = ("provisioner", "controller-publish", "node-stage", "controller-expand", "node-expand")


def check_storage_classes(docs: list[dict]) -> None:
    pools = pool_config(docs).get("pools", {})
    assert pools, "config.toml defines no pools"
    for name, p in pools.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name), f"pool name {name!r} is invalid"
        assert p.get("kind") in ("local", "rbd"), f"pool {name}: kind {p.get('kind')!r}"
        if p["kind"] == "rbd":
            assert p.get("monitors") and all(isinstance(m, str) for m in p["monitors"]), f"pool {name}: monitors"
            assert isinstance(p.get("rados_pool"), str), f"pool {name}: rados_pool"
            assert p.get("mounter", "auto") in ("auto", "krbd", "nbd", "fuse"), f"pool {name}: mounter"
    for sc in of_kind(docs, "StorageClass"):
        params = sc.get("parameters", {})
        pool = params.get("pool")
        assert pool in pools, f"StorageClass {sc['metadata']['name']}: pool {pool!r} is not in config.toml"
        fstype = params.get("csi.storage.k8s.io/fstype") or params.get("fsType")
        assert fstype in ("ext4", "xfs"), f"StorageClass {sc['metadata']['name']}: fstype {fstype!r}"
        assert sc.get("allowVolumeExpansion") is True, f"StorageClass {sc['metadata']['name']} does not allow expansion"
        if pools[pool]["kind"] == "rbd":
            names = {params.get(f"csi.storage.k8s.io/{p}-secret-name") for p in SECRET_PARAMS}
            nss = {params.get(f"csi.storage.k8s.io/{p}-secret-namespace") for p in SECRET_PARAMS}
            assert len(names) == 1 and None not in names, f"RBD StorageClass secret names: {names}"
            assert len(nss) == 1 and None not in nss, f"RBD StorageClass secret namespaces: {nss}"
        else:
            assert sc.get("volumeBindingMode") == "WaitForFirstConsumer", \
                f"local StorageClass {sc['metadata']['name']} must bind WaitForFirstConsumer"


def check_volume_snapshot_classes(docs: list[dict], driver: str = DRIVER) -> None:
    """Field checks for the CRD kind the schema step skips."""
    rbd_secret = None
    for sc in of_kind(docs, "StorageClass"):
        rbd_secret = sc.get("parameters", {}).get("csi.storage.k8s.io/provisioner-secret-name") or rbd_secret
    for vsc in of_kind(docs, "VolumeSnapshotClass"):
        n = vsc["metadata"]["name"]
        assert vsc.get("apiVersion") == "snapshot.storage.k8s.io/v1", f"{n}: apiVersion {vsc.get('apiVersion')}"
        extra = set(vsc) - {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
        assert not extra, f"VolumeSnapshotClass {n}: unknown fields {sorted(extra)}"
        assert vsc.get("driver") == driver, f"VolumeSnapshotClass {n}: driver {vsc.get('driver')!r}"
        assert vsc.get("deletionPolicy") in ("Delete", "Retain"), f"{n}: deletionPolicy {vsc.get('deletionPolicy')!r}"
        params = vsc.get("parameters") or {}
        assert all(isinstance(v, str) for v in params.values()), f"{n}: parameters must be strings"
        if "rbd" in n:
            assert params.get("csi.storage.k8s.io/snapshotter-secret-name") == rbd_secret, \
                f"{n}: snapshotter secret {params.get('csi.storage.k8s.io/snapshotter-secret-name')!r}, " \
                f"StorageClass uses {rbd_secret!r}"


def check_images_pinned(docs: list[dict]) -> None:
    for w in workloads(docs):
        for name, c in containers(w).items():
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and "/" not in tag, f"{wl_name(w)}/{name}: image {image} has no tag"
            assert tag != "latest", f"{wl_name(w)}/{name}: image {image} is not pinned"
            if name != "haina":
                assert repo.startswith("registry.k8s.io/sig-storage/"), f"{name}: unexpected image {image}"
                assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"{name}: tag {tag} is not a release"


ALL_CHECKS = [
    check_csidriver,
    check_driver_name_everywhere,
    check_socket_wiring,
    check_registrar,
    check_node_plugin,
    check_controller_sidecars,
    check_leader_election_rbac,
    check_sidecar_rbac,
    check_storage_classes,
    check_volume_snapshot_classes,
    check_images_pinned,
]
