#!/usr/bin/env python3
"""Validate Kubernetes manifests against the OpenAPI schemas bundled with
kubernetes-validate, in strict mode (unknown fields are errors).

    validate_schemas.py [--kubernetes-version V ...] FILE...

Kinds that come from CRDs (VolumeSnapshotClass, ServiceMonitor) have no
schema there: they are skipped here, by name, with a message, and checked
field by field in test_wiring.py instead. Any other kind without a schema is
an error. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

# CRD kinds: apiVersion/kind -> where they are checked instead.
CRD_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): "tests/deploy/test_wiring.py::test_volume_snapshot_classes",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "tests/deploy/test_wiring.py::test_service_monitor",
}


def load(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def validate_docs(docs: list[dict], version: str, label: str) -> tuple[int, int, list[str]]:
    """Returns (validated, skipped, errors)."""
    validated = skipped = 0
    errors: list[str] = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{label}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if key in CRD_KINDS:
            skipped += 1
            continue
        try:
            kv.validate(doc, version, strict=True)
            validated += 1
        except kv.SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message}")
        except kv.ValidationError as e:
            path = "/".join(str(p) for p in e.path) or "(root)"
            errors.append(f"{name}: at {path}: {e.message}")
    return validated, skipped, errors


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubernetes-version", action="append", dest="versions")
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    versions = args.versions or [kv.latest_version()]

    failures = 0
    for path in args.files:
        docs = load(path)
        if not docs:
            print(f"FAIL {path}: no objects")
            failures += 1
            continue
        for version in versions:
            ok, skipped, errors = validate_docs(docs, version, path.name)
            for err in errors:
                print(f"FAIL {err} (Kubernetes {version})")
            failures += len(errors)
            print(f"{'ok  ' if not errors else 'FAIL'} {path.name}: {ok} objects valid against Kubernetes {version}"
                  f"{f', {len(errors)} invalid' if errors else ''}"
                  f"{f', {skipped} CRD objects skipped' if skipped else ''}")
    skipped_kinds = ", ".join(f"{k} ({where})" for (_, k), where in CRD_KINDS.items())
    print(f"skipped (CRD kinds, no bundled schema; checked in): {skipped_kinds}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
