#!/usr/bin/env bash
# Single-node throw-away Ceph cluster for haina's RBD tests.
#
#   cluster.sh up   DIR   boot 1 mon + 1 mgr + 1 osd (bluestore on a sparse
#                         file) with cephx, an RBD pool "haina" and a user
#                         client.haina; prints the env to use
#   cluster.sh env  DIR   print that env again as `export` lines
#   cluster.sh down DIR   stop the daemons (by pid file) and remove DIR
#   cluster.sh status DIR `ceph -s` of the cluster in DIR
#
# Everything (conf, keyrings, data, logs, sockets, pid files) lives under DIR;
# no systemd, nothing under /etc/ceph or /var/lib/ceph is touched. The
# monitor listens on 127.0.0.1 only: msgr v2 on PORT and msgr v1 on PORT+1.
# PORT is $HAINA_CEPH_PORT if set, else a free port picked at random, so two
# clusters (two DIRs) can run side by side.
#
# Tunables (env): HAINA_CEPH_PORT, HAINA_CEPH_OSD_SIZE_GB (default 8),
# HAINA_CEPH_TIMEOUT (seconds to wait for boot, default 120).
# Needs the packages from scripts/ceph/install.sh.
set -euo pipefail

POOL=haina
USER_ID=haina
MARKER=".haina-ceph-cluster"

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }
now() { date +%s.%N; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
CMD=$1
DIR=$2
[[ -n $DIR ]] || usage
case $DIR in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR=${DIR%/}
[[ -n $DIR && $DIR != / ]] || die "refusing DIR=/"

CONF="$DIR/ceph.conf"

DEADLINE=0
# Seconds left before the boot deadline (at least 5), or 60 outside `up`.
remaining() {
    if ((DEADLINE == 0)); then echo 60; return; fi
    local r=$((DEADLINE - $(date +%s)))
    echo $((r > 5 ? r : 5))
}
# Run a command bounded by the boot deadline.
bounded() { timeout "$(remaining)" "$@"; }
ceph_() { bounded ceph -c "$CONF" "$@"; }

port_in_use() {
    # true if something listens on TCP port $1 (any address)
    ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

pick_port() {
    if [[ -n ${HAINA_CEPH_PORT:-} ]]; then
        [[ $HAINA_CEPH_PORT =~ ^[0-9]+$ ]] || die "HAINA_CEPH_PORT must be a number"
        if port_in_use "$HAINA_CEPH_PORT" || port_in_use $((HAINA_CEPH_PORT + 1)); then
            die "HAINA_CEPH_PORT=$HAINA_CEPH_PORT: port $HAINA_CEPH_PORT or $((HAINA_CEPH_PORT + 1)) already in use"
        fi
        echo "$HAINA_CEPH_PORT"
        return
    fi
    local p i
    for i in $(seq 1 50); do
        # even ports in 20000..29998 (below the ephemeral range, away from
        # the daemons' 6800-7300 range)
        p=$((20000 + (RANDOM % 5000) * 2))
        if ! port_in_use "$p" && ! port_in_use $((p + 1)); then
            echo "$p"
            return
        fi
    done
    die "no free port pair found; set HAINA_CEPH_PORT"
}

print_env() {
    [[ -f $DIR/env ]] || die "$DIR/env not found: is a cluster up in $DIR?"
    cat "$DIR/env"
}

dump_logs() {
    local f
    for f in "$DIR"/log/*.log "$DIR"/log/*.out; do
        [[ -s $f ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

fail_boot() {
    echo "cluster.sh: boot FAILED: $*" >&2
    dump_logs
    echo "cluster.sh: daemons left running; clean up with: $0 down $DIR" >&2
    exit 1
}

# Run "$@" until it succeeds or the boot deadline passes.
wait_for() {
    local what=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        if (($(date +%s) > DEADLINE)); then
            fail_boot "timed out waiting for $what"
        fi
        sleep 0.3
    done
}

# Pids of this cluster's daemons of one type (osd, mgr or mon): from the pid
# files, plus, as a fallback for a daemon that died before writing its pid
# file, processes started by this script with this exact conf file.
daemon_pids() {
    local type=$1 f pid
    for f in "$DIR"/run/"$type".*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    done
    pgrep -f -- "^ceph-$type -c $CONF( |\$)" 2>/dev/null || true
}

all_daemon_pids() {
    { daemon_pids osd; daemon_pids mgr; daemon_pids mon; } | sort -u
}

# TERM the given pids, wait up to $1 seconds, then KILL what is left.
stop_pids() {
    local grace=$1
    shift
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    local i p alive
    for ((i = 0; i < grace * 10; i++)); do
        alive=""
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+="$p "; done
        [[ -z $alive ]] && return 0
        sleep 0.1
    done
    for p in "$@"; do
        if kill -0 "$p" 2>/dev/null; then
            log "pid $p did not stop on TERM within ${grace}s; sending KILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
}

cmd_down() {
    if [[ ! -e $DIR ]]; then
        log "$DIR does not exist; nothing to do"
        return 0
    fi
    [[ -f $DIR/$MARKER ]] || die "$DIR was not created by cluster.sh (no $MARKER); refusing to remove it"
    # OSD first, while the monitor is still there to acknowledge its
    # shutdown (an OSD whose monitor is gone waits for it), then mgr and mon
    # together. Each takes ~2 s to exit.
    local group pids
    for group in "osd" "mgr mon"; do
        # shellcheck disable=SC2086
        pids=$(for t in $group; do daemon_pids "$t"; done | sort -u | tr '\n' ' ')
        if [[ -n ${pids// /} ]]; then
            log "stopping ${group/ / + } (pid ${pids% })"
            # shellcheck disable=SC2086
            stop_pids 5 $pids
        fi
    done
    rm -rf -- "$DIR"
    log "down: $DIR removed"
}

write_conf() {
    local fsid=$1 port=$2 v1port=$3 osd_bytes=$4
    cat >"$CONF" <<EOF
# Generated by haina scripts/ceph/cluster.sh: a single-node test cluster.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$port,v1:127.0.0.1:$v1port]
mon_initial_members = a
public_addr = 127.0.0.1
public_network = 127.0.0.0/8
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $DIR/keyring
run_dir = $DIR/run
crash_dir = $DIR/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
mon_pg_warn_min_per_osd = 0
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_osd_full_ratio = 0.97
mon_osd_backfillfull_ratio = 0.95
mon_osd_nearfull_ratio = 0.93
mgr_stats_period = 1
mon_mgr_digest_period = 1

[mon]
mon_data = $DIR/mon
log_file = $DIR/log/\$name.log
mon_cluster_log_file = $DIR/log/cluster.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok

[mgr]
mgr_data = $DIR/mgr
keyring = $DIR/mgr/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok

[osd]
osd_data = $DIR/osd
keyring = $DIR/osd/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
osd_objectstore = bluestore
bluestore_block_path = $DIR/osd-block.img
bluestore_block_create = true
bluestore_block_size = $osd_bytes
bluestore_block_db_create = false
bluestore_block_wal_create = false
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
bluestore_fsck_on_umount = false
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 1073741824
osd_memory_cache_min = 134217728
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_crush_update_on_start = true
osd_scrub_load_threshold = 0.01
osd_max_scrubs = 1
EOF
}

cmd_up() {
    local t0
    t0=$(now)
    for bin in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd; do
        command -v "$bin" >/dev/null || die "$bin not found: run scripts/ceph/install.sh first"
    done
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    if [[ -e $DIR ]]; then
        if [[ -f $DIR/$MARKER ]] && [[ -n $(all_daemon_pids) ]]; then
            die "a cluster is already running in $DIR (use '$0 down $DIR' first)"
        fi
        [[ -z $(ls -A "$DIR") || -f $DIR/$MARKER ]] || die "$DIR exists and is not empty"
        rm -rf -- "$DIR"
    fi
    local port v1port fsid osd_uuid osd_gb
    osd_gb=${HAINA_CEPH_OSD_SIZE_GB:-8}
    if ! [[ $osd_gb =~ ^[0-9]+$ ]] || ((osd_gb < 2)); then
        die "HAINA_CEPH_OSD_SIZE_GB must be an integer >= 2"
    fi
    port=$(pick_port)
    mkdir -p "$DIR"/{bootstrap,mon,mgr,osd,log,run,crash}
    touch "$DIR/$MARKER"

    local timeout=${HAINA_CEPH_TIMEOUT:-120}
    DEADLINE=$(($(date +%s) + timeout))
    v1port=$((port + 1))
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid" "$port" "$v1port" $((osd_gb * 1024 * 1024 * 1024))

    # Keys: every entity's key goes into the monitor's initial keyring so the
    # auth database is complete at mkfs and no `ceph auth` round trips are
    # needed while booting.
    local k="$DIR/bootstrap/mon.keyring"
    ceph-authtool --create-keyring "$k" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/mgr/keyring" --gen-key -n mgr.x \
        --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/osd/keyring" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/$USER_ID.keyring" --gen-key -n "client.$USER_ID" \
        --cap mon 'profile rbd' --cap osd "profile rbd pool=$POOL" --cap mgr "profile rbd pool=$POOL" >/dev/null
    local f
    for f in "$DIR/keyring" "$DIR/mgr/keyring" "$DIR/osd/keyring" "$DIR/$USER_ID.keyring"; do
        ceph-authtool "$k" --import-keyring "$f" >/dev/null
    done
    chmod 600 "$DIR"/*.keyring "$DIR/keyring" "$DIR"/*/keyring "$k"

    monmaptool --create --fsid "$fsid" \
        --addv a "[v2:127.0.0.1:$port,v1:127.0.0.1:$v1port]" "$DIR/bootstrap/monmap" >/dev/null
    bounded ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/bootstrap/monmap" --keyring "$k" \
        >"$DIR/log/mon-mkfs.out" 2>&1 || fail_boot "ceph-mon --mkfs failed"
    bounded ceph-mon -c "$CONF" -i a >"$DIR/log/mon.a.out" 2>&1 || fail_boot "ceph-mon did not start"
    local t_mon
    t_mon=$(now)

    # OSD: register it, build its bluestore (the monitor is needed for the
    # monmap and auth), then start it. The mgr starts meanwhile.
    bounded ceph-mgr -c "$CONF" -i x >"$DIR/log/mgr.x.out" 2>&1 || fail_boot "ceph-mgr did not start"
    local id
    id=$(ceph_ osd new "$osd_uuid" 0 2>"$DIR/log/osd-new.out") || fail_boot "ceph osd new failed"
    [[ $id == 0 ]] || fail_boot "ceph osd new returned id '$id', expected 0"
    bounded ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/osd-mkfs.out" 2>&1 ||
        fail_boot "ceph-osd --mkfs failed"
    bounded ceph-osd -c "$CONF" -i 0 >"$DIR/log/osd.0.out" 2>&1 || fail_boot "ceph-osd did not start"
    local t_osd
    t_osd=$(now)

    ceph_ osd pool create "$POOL" 8 8 replicated --size 1 >"$DIR/log/pool.out" 2>&1 ||
        ceph_ osd pool create "$POOL" 8 8 replicated >>"$DIR/log/pool.out" 2>&1 ||
        fail_boot "ceph osd pool create $POOL failed"
    # `rbd pool init` writes to the pool, so it returns once the PGs are active.
    bounded rbd -c "$CONF" pool init "$POOL" >"$DIR/log/pool-init.out" 2>&1 ||
        fail_boot "rbd pool init $POOL failed or timed out"

    local key
    key=$(ceph-authtool -p -n "client.$USER_ID" "$DIR/$USER_ID.keyring")
    cat >"$DIR/env" <<EOF
export CEPH_CONF=$CONF
export HAINA_CEPH_MON=127.0.0.1:$port
export HAINA_CEPH_POOL=$POOL
export HAINA_CEPH_USER=$USER_ID
export HAINA_CEPH_KEY=$key
export HAINA_CEPH_KEYRING=$DIR/$USER_ID.keyring
export HAINA_CEPH_ADMIN_KEYRING=$DIR/keyring
EOF
    chmod 600 "$DIR/env"

    # Smoke test as the restricted user, exactly as clients will connect.
    local img="boot-check-$$"
    bounded rbd -c "$CONF" --id "$USER_ID" --keyring "$DIR/$USER_ID.keyring" -p "$POOL" \
        create --size 16M "$img" >"$DIR/log/smoke.out" 2>&1 || fail_boot "rbd create as client.$USER_ID failed"
    bounded rbd -c "$CONF" --id "$USER_ID" --keyring "$DIR/$USER_ID.keyring" -p "$POOL" \
        rm --no-progress "$img" >>"$DIR/log/smoke.out" 2>&1 || fail_boot "rbd rm as client.$USER_ID failed"

    # Wait for the mgr (pool statistics, `ceph df`) and for `ceph -s` to show
    # the OSD up and in.
    wait_for "osd.0 up/in and mgr active in 'ceph -s'" check_status
    local t_end
    t_end=$(now)
    log "$(awk -v a="$t0" -v m="$t_mon" -v o="$t_osd" -v e="$t_end" -v p="$port" -v q="$v1port" \
        'BEGIN { printf "up in %.1fs (mon started +%.1fs, osd started +%.1fs); mon v2 127.0.0.1:%s v1 127.0.0.1:%s", e-a, m-a, o-a, p, q }')"
    print_env
}

check_status() {
    local s
    s=$(ceph_ -s -f json 2>/dev/null) || return 1
    python3 - "$s" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])
om = s.get("osdmap", {})
om = om.get("osdmap", om)  # pre-pacific nests it
ok = om.get("num_up_osds") == 1 and om.get("num_in_osds") == 1 and s.get("mgrmap", {}).get("available")
sys.exit(0 if ok else 1)
EOF
}

case $CMD in
up) cmd_up ;;
down) cmd_down ;;
env) print_env ;;
status) ceph_ -s ;;
*) usage ;;
esac
