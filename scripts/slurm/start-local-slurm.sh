#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing the pipeline's SLURM profile for real
# (tests/test_slurm.py; CI). Idempotent: a second call finds the cluster up and returns at once.
#
#   scripts/slurm/start-local-slurm.sh          # install if missing, configure, start, wait until the node is idle
#   scripts/slurm/start-local-slurm.sh --stop   # stop the daemons this script started
#
# What it does, as root:
#   1. installs slurm-wlm and munge from the distribution (apt-get) where slurmctld, slurmd or munged is missing;
#   2. writes /etc/slurm/slurm.conf for one node on localhost: cgroup-free (proctrack/linuxproc, task/none), no
#      accounting (accounting_storage/none, jobacct_gather/none, so `sacct` has nothing: job status comes from
#      `squeue`, kept for MinJobAge seconds after a job ends), select/cons_tres, the node's CPUs and memory as
#      `slurmd -C` reports them, one default partition `local`;
#   3. starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
# An /etc/slurm/slurm.conf written by someone else (a real cluster) is never overwritten: the script stops.
# On failure it prints one line starting with "start-local-slurm: cannot start:" (the reason) and exits non-zero;
# the last lines of the daemons' logs follow where they exist.
set -uo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by avb-replication scripts/slurm/start-local-slurm.sh"
STATE=/var/spool/slurmctld-avb
SPOOL=/var/spool/slurmd-avb
LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld-avb.pid
SLURMD_PID=/run/slurmd-avb.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_MARK=/run/munge/started-by-start-local-slurm
PARTITION=local
WAIT_S=${SLURM_START_WAIT_S:-60}

fail() {
    echo "start-local-slurm: cannot start: $*" >&2
    for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
        [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 5 "$f" >&2; }
    done
    exit 1
}
say() { echo "start-local-slurm: $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    local f pid
    for f in "$SLURMD_PID" "$CTLD_PID"; do
        if alive "$f"; then pid=$(cat "$f"); kill "$pid" && say "stopped ${f#/run/} (pid $pid)"; fi
    done
    if [ -e "$MUNGE_MARK" ] && alive "$MUNGE_PID"; then  # only a munged that this script started
        pid=$(cat "$MUNGE_PID"); kill "$pid" && say "stopped munged (pid $pid)"
    fi
    rm -f "$MUNGE_MARK"
    exit 0
}
[ "${1:-}" = "--stop" ] && stop

# --- 1. packages -------------------------------------------------------------------------------------------
missing=()
for bin in slurmctld slurmd munged sinfo squeue sbatch srun scontrol; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "${missing[*]} not installed and not root (needed for apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null 2>&1 || fail "${missing[*]} not installed and no apt-get on this system"
    say "installing slurm-wlm and munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/tmp/start-local-slurm.apt.log 2>&1 \
        && apt-get install -y -qq slurm-wlm munge >>/tmp/start-local-slurm.apt.log 2>&1 \
        || fail "apt-get install slurm-wlm munge failed (see /tmp/start-local-slurm.apt.log): $(tail -n 1 /tmp/start-local-slurm.apt.log)"
fi
export PATH="$PATH:/usr/sbin:/sbin"
[ "$(id -u)" = 0 ] || {
    # Not root: usable only if a cluster written by this script is already up.
    sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && { say "cluster already up"; exit 0; }
    fail "the daemons must be started as root (munged, slurmctld, slurmd)"
}

# --- 2. configuration --------------------------------------------------------------------------------------
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script (a real cluster?); not touching it"
fi
node=$(hostname -s)
hw=$(slurmd -C 2>/dev/null | head -n 1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[ -n "$cpus" ] && [ -n "$mem" ] || fail "slurmd -C did not report CPUs/RealMemory (got: '$hw')"
hw=${hw/NodeName=* CPUs=/CPUs=}   # keep slurmd's topology fields, name the node ourselves
new_conf=$(cat <<EOF
$MARK
# One node on localhost, no cgroups, no accounting. Regenerated on each start (node size from slurmd -C).
ClusterName=avblocal
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay visible to squeue this long (snakemake-executor-plugin-slurm's squeue status needs
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks).
MinJobAge=600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS"
changed=0
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF" || fail "cannot write $CONF"
    changed=1
    say "wrote $CONF (node $node: CPUs=$cpus RealMemory=${mem}MB)"
fi

# --- 3. daemons --------------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || {
        if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile /etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
        chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    } || fail "cannot create /etc/munge/munge.key"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged >/tmp/start-local-slurm.munged.log 2>&1 \
        || /usr/sbin/munged --force >>/tmp/start-local-slurm.munged.log 2>&1 \
        || fail "munged did not start: $(tail -n 1 /tmp/start-local-slurm.munged.log)"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || fail "munged is running but munge -n | unmunge fails"
    touch "$MUNGE_MARK"
    say "munged started"
fi

if [ "$changed" = 1 ]; then  # a new configuration: restart whatever this script started before
    for f in "$SLURMD_PID" "$CTLD_PID"; do
        if alive "$f"; then kill "$(cat "$f")"; for _ in $(seq 50); do alive "$f" || break; sleep 0.2; done; fi
    done
fi
if ! alive "$CTLD_PID"; then
    /usr/sbin/slurmctld >>"$LOGS/slurmctld.start.log" 2>&1 || fail "slurmctld did not start ($LOGS/slurmctld.log)"
    say "slurmctld started"
fi
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q "is UP" || fail "slurmctld does not answer scontrol ping"
if ! alive "$SLURMD_PID"; then
    /usr/sbin/slurmd >>"$LOGS/slurmd.start.log" 2>&1 || fail "slurmd did not start ($LOGS/slurmd.log)"
    say "slurmd started"
fi

state=""
for _ in $(seq $((WAIT_S * 2))); do
    state=$(sinfo -h -N -n "$node" -o %t 2>/dev/null | head -n 1)
    case "$state" in
        idle|mix|alloc|comp) break ;;
        down*|drain*|drng*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mix|alloc|comp) ;;
    *) fail "node $node is '${state:-unknown}' in sinfo after ${WAIT_S}s, expected idle" ;;
esac
say "cluster up: partition $PARTITION, node $node $state (CPUs=$cpus RealMemory=${mem}MB)"
sinfo
