"""Helpers for the deploy tests: load manifests, render the chart, look
things up in pod specs, and answer RBAC questions."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "haina"
MANIFESTS = REPO / "deploy" / "kubernetes"

DRIVER = "haina.csi.dev"
TOPOLOGY_KEY = "topology.haina.dev/node"
NAMESPACE = "haina-system"
RELEASE = "haina"
KUBELET_DIR = "/var/lib/kubelet"
DATA_DIR = "/var/lib/haina"
METRICS_PORT = 9808

# The committed plain manifests and the values each was rendered with
# (mirrors RENDERINGS in scripts/check-deploy.sh).
RENDERINGS = {
    "haina.yaml": [],
    "haina-rbd.yaml": ["ci/rbd-values.yaml"],
    "haina-local-node.yaml": ["ci/local-node-values.yaml"],
}

CONTROLLER_SIDECARS = ("csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer")


def load_file(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def helm_binary() -> str | None:
    return os.environ.get("HAINA_HELM") or shutil.which("helm")


class HelmError(Exception):
    pass


def render(values_files: Iterable[str] = (), sets: Iterable[str] = (), namespace: str = NAMESPACE,
           values: dict | None = None) -> list[dict]:
    """helm template the chart with values files (relative to the chart),
    --set strings and a values dict; raises HelmError with helm's stderr on
    failure."""
    helm = helm_binary()
    if helm is None:
        raise HelmError("helm not found (set HAINA_HELM or run scripts/check-deploy.sh)")
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", namespace, "--set", "createNamespace=true"]
    for v in values_files:
        cmd += ["-f", str(CHART / v)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        if values is not None:
            yaml.safe_dump(values, extra)
            extra.flush()
            cmd += ["-f", extra.name]
        for s in sets:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# ------------------------------------------------------------------ lookups

def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec(workload)["containers"]}


def volumes(workload: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def args_of(container: dict) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def flag(container: dict, name: str) -> str | None:
    """Value of --name=value (or the bare --name -> "true"); None if absent."""
    value = None
    for a in args_of(container):
        if a == f"--{name}" or a == f"-{name}":
            value = "true"
        elif a.startswith(f"--{name}=") or a.startswith(f"-{name}="):
            value = a.split("=", 1)[1]
    return value


def env_field_ref(container: dict, name: str) -> str | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    return None


def expand_env(container: dict, value: str) -> str:
    for e in container.get("env", []):
        if "value" in e:
            value = value.replace(f"$({e['name']})", e["value"])
    return value


@dataclass
class MountedPath:
    volume: str
    mount_path: str
    sub: str  # the rest of the path below mount_path
    mount: dict


def resolve_mount(container: dict, path: str) -> MountedPath | None:
    """Which volumeMount holds `path` in this container (longest prefix)."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) > len(best.mount_path):
                best = MountedPath(m["name"], mp, path[len(mp):].lstrip("/"), m)
    return best


def host_path_of(workload: dict, volume_name: str) -> str | None:
    v = volumes(workload).get(volume_name)
    return v["hostPath"]["path"].rstrip("/") if v and "hostPath" in v else None


def haina_container(workload: dict) -> dict:
    c = containers(workload).get("haina")
    assert c is not None, f"{workload['kind']}/{workload['metadata']['name']} has no haina container"
    return c


def socket_path(haina: dict) -> str:
    endpoint = flag(haina, "endpoint")
    assert endpoint and endpoint.startswith("unix://"), f"haina --endpoint is {endpoint!r}, want unix://..."
    return expand_env(haina, endpoint[len("unix://"):])


def services(haina: dict) -> set[str]:
    s = flag(haina, "services")
    return set((s or "controller,node").split(","))


# ------------------------------------------------------------------ RBAC

def _rule_allows(rule: dict, verb: str, group: str, resource: str) -> bool:
    return (
        (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
        and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
        and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
    )


def can(docs: list[dict], sa: str, namespace: str, verb: str, group: str, resource: str,
        in_namespace: str | None = None) -> bool:
    """Whether ServiceAccount namespace/sa may `verb` `group/resource`:
    cluster-wide through a ClusterRoleBinding, or in `in_namespace` through a
    RoleBinding there (to a Role or ClusterRole)."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d.get("kind") in ("Role", "ClusterRole")}

    def subject_match(binding: dict) -> bool:
        return any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == namespace
                   for s in binding.get("subjects", []))

    for b in docs:
        kind = b.get("kind")
        if kind == "ClusterRoleBinding":
            pass
        elif kind == "RoleBinding" and in_namespace is not None and b["metadata"].get("namespace") == in_namespace:
            pass
        else:
            continue
        if not subject_match(b):
            continue
        ref = b["roleRef"]
        role_ns = None if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace")
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        if role and any(_rule_allows(r, verb, group, resource) for r in role.get("rules", [])):
            return True
    return False
