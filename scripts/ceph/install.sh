#!/usr/bin/env bash
# Install Debian 12's own Ceph 16.2 packages needed for the single-node test
# cluster (scripts/ceph/cluster.sh) and for building/running haina-rbd.
# Idempotent: does nothing when everything is already installed; runs
# `apt-get update` only when the package lists are missing or a package
# cannot be found.
set -euo pipefail

# procps (pgrep) and iproute2 (ss) are used by cluster.sh.
PKGS=(ceph-mon ceph-mgr ceph-osd ceph-common rbd-fuse librbd-dev librados-dev procps iproute2)

if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: must run as root (apt-get install)" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: ceph packages already installed ($(dpkg-query -W -f='${Version}' ceph-common))"
    exit 0
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Update the lists only if they are absent or do not know one of the packages.
need_update=0
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    need_update=1
else
    for p in "${missing[@]}"; do
        if ! apt-cache show "$p" >/dev/null 2>&1; then need_update=1; break; fi
    done
fi
if [[ $need_update -eq 1 ]]; then
    apt-get update -qq
fi

install_pkgs() {
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${missing[@]}"
}
if ! install_pkgs; then
    # A stale list may point at removed package versions: refresh once and retry.
    apt-get update -qq
    install_pkgs
fi

# The Debian packages enable systemd units; this box does not use them (and on
# a container without systemd they are inert anyway). Nothing else to do.
echo "install.sh: done ($(dpkg-query -W -f='${Version}' ceph-common))"
