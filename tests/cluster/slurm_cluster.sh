#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for `make test-cluster` (tests/cluster/run.sh).
#   tests/cluster/slurm_cluster.sh install   # Debian packages (root; apt-get)
#   tests/cluster/slurm_cluster.sh up        # write configs, start the daemons, wait until idle
#   tests/cluster/slurm_cluster.sh down      # cancel jobs, stop every daemon `up` started
# It mirrors a site with accounting: munge, MariaDB + slurmdbd (sacct, the executor plugin's
# default status command, and account validation work as on a real cluster), slurmctld and
# slurmd. Partitions as in profiles/slurm: "cpu" (default) and "gpu". The node declares two
# GPUs (gres/gpu backed by placeholder device files: nothing runs on them, they are there so
# that --gpus=1 is scheduled as on a GPU node), and more CPUs and memory than the machine has
# (SlurmdParameters=config_overrides), so the profile's requests (cpus_per_task 4, mem_mb
# 64000) are accepted unchanged. The "cpu" partition's QOS denies GPU requests, so a model rule
# that the profile sends to "cpu" is rejected at sbatch time, as on a site whose CPU nodes
# have no GPUs.
# The configuration goes where Slurm looks by default, /etc/slurm (slurm.conf, gres.conf,
# slurmdbd.conf: marked as written here; `up` refuses to replace a site's own, `down` removes
# them): srun inside a job (the executor's jobstep drops SLURM_CONF from its environment) finds
# it there as on a real site. State, logs, the database and munge's key and socket live in
# $BACKLENS_SLURM_DIR (default /tmp/backlens-slurm). Needs root (the daemons run as root, jobs as
# the calling user: root).
set -euo pipefail

DIR=${BACKLENS_SLURM_DIR:-/tmp/backlens-slurm}
DB_PORT=${BACKLENS_SLURM_DB_PORT:-3307}
ACCOUNT=${BACKLENS_SLURM_ACCOUNT:-backlens}
HOST=$(hostname -s)
CONF=/etc/slurm
MARK="# Written by tests/cluster/slurm_cluster.sh (one-node test cluster)"
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    [ "$(id -u)" -eq 0 ] || die "run as root (apt-get and the Slurm daemons need it)"
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages present: ${PACKAGES[*]}"
        return
    fi
    log "installing ${missing[*]}"
    # The packages' own services (system munged, MariaDB on port 3306, slurmd) must not start:
    # this script starts its own and leaves nothing running. policy-rc.d tells apt so.
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tests/cluster/slurm_cluster.sh install: no service starts\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added=1
    fi
    apt-get update -qq
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [ -z "$added" ] || rm -f "$policy"
    [ "$status" -eq 0 ] || die "apt-get install ${missing[*]} failed"
}

write_configs() {
    mkdir -p "$DIR"/{munge,mysql,state,spool,log,gpu} "$CONF"
    chmod 755 "$DIR"  # the munge user reaches its directory through it
    cat >"$CONF/slurm.conf" <<EOF
$MARK
ClusterName=backlens-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups in containers: track processes by parent id, do not bind tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Accept the node's declared CPUs, memory and GPUs although the machine is smaller.
SlurmdParameters=config_overrides
ReturnToService=2
# Keep finished jobs visible to squeue for an hour (also the plugin's squeue fallback).
MinJobAge=3600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# With munge, the "password" of the accounting connection is munged's socket.
AccountingStoragePass=$DIR/munge/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations,limits,qos
# The executor plugin puts the rule name in --comment: keep it in sacct's history.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 RealMemory=131072 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=24:00:00 QOS=cpu_only State=UP
PartitionName=gpu Nodes=$HOST MaxTime=24:00:00 State=UP
EOF
    # gres/gpu needs a device file per GPU; character devices that are /dev/null.
    for i in 0 1; do
        [ -e "$DIR/gpu/gpu$i" ] || mknod "$DIR/gpu/gpu$i" c 1 3
    done
    printf '%s\nNodeName=%s Name=gpu File=%s\n' "$MARK" "$HOST" "$DIR/gpu/gpu[0-1]" >"$CONF/gres.conf"
    cat >"$CONF/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=backlens-test
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF/slurmdbd.conf"
}

# Wait until a command succeeds (up to $1 seconds).
wait_for() {
    local seconds=$1
    shift
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

start_munge() {
    mungekey --create --keyfile="$DIR/munge/munge.key" --force
    chown -R munge:munge "$DIR/munge"
    # munged wants its socket directory searchable by all (clients connect through it).
    chmod 755 "$DIR/munge"
    chmod 400 "$DIR/munge/munge.key"
    # munged refuses to run as root; the package's munge user owns the key and socket.
    runuser -u munge -- /usr/sbin/munged --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/munge/munged.log"
    wait_for 10 bash -c "munge -S '$DIR/munge/munge.socket' -n | unmunge -S '$DIR/munge/munge.socket'" \
        || die "munged did not start ($DIR/munge/munged.log)"
}

start_mariadb() {
    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --skip-test-db \
        --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed ($DIR/log/mariadb-install.log)"
    mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/mariadb.pid" \
        --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
    wait_for 60 mariadb --no-defaults --socket="$DIR/mysql.sock" -e "SELECT 1" \
        || die "mariadbd did not start ($DIR/log/mariadb.log)"
    mariadb --no-defaults --socket="$DIR/mysql.sock" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'backlens-test';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'backlens-test';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurm() {
    slurmdbd
    wait_for 60 sacctmgr -n list cluster || die "slurmdbd did not answer ($DIR/log/slurmdbd.log)"
    # The site's accounting: the cluster, an account for the calling user, and the QOS that
    # keeps GPU requests off the cpu partition (DenyOnLimit: sbatch rejects them at once).
    sacctmgr -i add cluster backlens-test >/dev/null
    sacctmgr -i add qos cpu_only Flags=DenyOnLimit >/dev/null
    sacctmgr -i add account "$ACCOUNT" Cluster=backlens-test Description="backlens test" >/dev/null
    sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" Cluster=backlens-test >/dev/null
    sacctmgr -i modify user "$(id -un)" set qos+=cpu_only,normal >/dev/null
    slurmctld
    # The database knows the gres/gpu TRES once slurmctld has registered it.
    wait_for 30 bash -c "sacctmgr -n -P list tres type=gres | grep -q gpu" || die "gres/gpu not registered"
    sacctmgr -i modify qos cpu_only set MaxTRESPerJob=gres/gpu=0 >/dev/null
    slurmd
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$state" = "idle " ] && break
        sleep 1
    done
    [ "$state" = "idle " ] || die "node $HOST is '$state', not idle ($DIR/log/slurmctld.log, slurmd.log)"
    log "up: $(sinfo --version), node $HOST idle, partitions $(sinfo -h -o %P | tr '\n' ' ')"
}

up() {
    [ "$(id -u)" -eq 0 ] || die "run as root (the Slurm daemons need it)"
    [ ! -e "$DIR/slurmctld.pid" ] || die "$DIR holds a running cluster; run '$0 down' first"
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [ -e "$CONF/$f" ] && ! grep -qxF "$MARK" "$CONF/$f"; then
            die "$CONF/$f is this machine's own Slurm configuration; the test cluster would replace it"
        fi
    done
    rm -rf "$DIR"
    # A failed start leaves nothing running.
    trap 'log "start failed: stopping what was started"; down' EXIT
    write_configs
    start_munge
    start_mariadb
    start_slurm
    trap - EXIT
}

# Stop the process in pid file $1 (TERM, then KILL after 30 s) and wait until it is gone.
stop_pid() {
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait_for 30 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
        wait_for 5 bash -c "! kill -0 $pid" || log "warning: process $pid ($file) survived"
    fi
    rm -f "$file"
}

down() {
    if [ -s "$DIR/slurmctld.pid" ]; then
        scancel --full --user "$(id -un)" 2>/dev/null || true
        wait_for 60 bash -c '[ -z "$(squeue -h -t RUNNING,PENDING,COMPLETING)" ]' \
            || log "warning: jobs still listed by squeue at shutdown"
    fi
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    stop_pid "$DIR/slurmdbd.pid"
    stop_pid "$DIR/mariadb.pid"
    stop_pid "$DIR/munge/munged.pid"
    local left
    left=$(pgrep -a -f "$DIR" || true)
    [ -z "$left" ] || die "processes still running from $DIR: $left"
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [ -e "$CONF/$f" ] && grep -qxF "$MARK" "$CONF/$f"; then rm -f "$CONF/$f"; fi
    done
    log "down: every daemon stopped"
}

case "${1:-}" in
    install) install_packages ;;
    up) up ;;
    down) down ;;
    *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
