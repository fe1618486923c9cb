#!/usr/bin/env bash
# The whole test suite, as root, on real devices:
#   1. install the tools and Ceph packages (idempotent);
#   2. boot a single-node Ceph cluster under a temp dir (torn down on exit);
#   3. run every Rust test with cargo-nextest (loop devices, mkfs, mounts,
#      the RBD pool against the real cluster);
#   4. validate the deployment artefacts (Helm chart, manifests, wiring).
# Set HAINA_SKIP_CEPH=1 to run without Ceph (the RBD tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "test.sh: run as root (tests create loop devices and mounts)" >&2; exit 1; }

scripts/install-deps.sh
if [[ "${HAINA_SKIP_CEPH:-0}" != 1 ]]; then
    scripts/ceph/install.sh
    CEPH_DIR=$(mktemp -d /var/tmp/haina-ceph.XXXXXX)
    rmdir "$CEPH_DIR"
    trap 'scripts/ceph/cluster.sh down "$CEPH_DIR" >/dev/null 2>&1 || true' EXIT
    scripts/ceph/cluster.sh up "$CEPH_DIR"
    # shellcheck disable=SC1090
    source <(scripts/ceph/cluster.sh env "$CEPH_DIR")
fi

status=0
cargo nextest run --workspace --no-fail-fast || status=$?
scripts/check-deploy.sh || status=$?
exit $status
