#!/usr/bin/env bash
# Installs what haina needs on a Debian 12 node or dev machine (idempotent):
# the filesystem tools the node plugin runs, fio for benchmarks, and
# cargo-nextest for the test suite. Ceph packages: scripts/ceph/install.sh.
set -euo pipefail
[[ $(id -u) -eq 0 ]] || { echo "install-deps.sh: run as root" >&2; exit 1; }
PKGS=(e2fsprogs xfsprogs util-linux btrfs-progs fio python3-venv)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "install-deps.sh: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
