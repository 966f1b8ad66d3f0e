#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests/CI (tests/test_slurm_cluster.py) and
# for trying the SLURM profile without a site: `snakemake --profile tests/slurm/profile <target>`.
#
# Run as root; no systemd needed. munged, slurmctld and two `slurmd -N n1|n2` daemons (both on
# 127.0.0.1, distinct ports) are started directly, each with its PID file under /run. Every node
# declares 2 fake GPUs (GRES backed by dummy character devices), so `--nodes=2 --ntasks-per-node=2
# --gres=gpu:2` is schedulable while the code itself runs on CPU. No cgroups, no accounting daemon:
# Snakemake checks job states with squeue, so finished jobs stay visible for MinJobAge seconds.
#
#   workflow/slurm-local/start.sh [--install]   # --install: apt-get the packages first (install.sh)
#   workflow/slurm-local/stop.sh
#
# Idempotent: a cluster already running with the same configuration is left alone; otherwise the
# daemons are (re)started. Knobs: SLURM_LOCAL_CPUS (CPUs per node, default nproc),
# SLURM_LOCAL_MEM_MB (memory per node, default 8000).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NODES=(n1 n2)
GPUS=2
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM_MB=${SLURM_LOCAL_MEM_MB:-8000}
HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
STARTED=$(date +%s)

say() { echo "[slurm-local +$(($(date +%s) - STARTED))s] $*"; }
die() { echo "slurm-local/start.sh: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "${1:-}" = "--install" ] && "$HERE/install.sh"
[ "$(id -u)" = 0 ] || die "must run as root (it starts system daemons and writes /etc/slurm)"
for binary in munged slurmctld slurmd sinfo srun; do
  command -v "$binary" >/dev/null || [ -x "/usr/sbin/$binary" ] ||
    die "'$binary' not found: install the packages with $HERE/install.sh (or run start.sh --install)"
done

# The whole configuration in one place; a changed file means a restart.
slurm_conf() {
  cat <<EOF
# Written by workflow/slurm-local/start.sh: a two-node test cluster on one host.
ClusterName=slurmlocal
SlurmctldHost=$HOST
SlurmctldPort=6817
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
# No cgroups in containers without systemd: track processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Schedule every few seconds (a requeued job would otherwise wait for the 60 s default pass).
SchedulerParameters=sched_interval=2,bf_interval=2
# Without accounting, squeue is the only job-state source: keep finished jobs listed for 10 min.
MinJobAge=600
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=15
# SIGTERM -> SIGKILL grace on cancel/requeue (Lightning ignores SIGTERM while auto-requeue is on).
KillWait=5
ReturnToService=2
MpiDefault=none
GresTypes=gpu
EOF
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17001 + i))" \
         "CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

gres_conf() {
  echo "NodeName=n[1-${#NODES[@]}] Name=gpu File=/dev/fakegpu[0-$((GPUS - 1))]"
}

running_as_configured() {
  [ -f "$CONF" ] && [ "$(slurm_conf)" = "$(cat "$CONF")" ] || return 1
  alive /run/munge/munged.pid && alive /run/slurm/slurmctld.pid || return 1
  for node in "${NODES[@]}"; do alive "/run/slurm/slurmd-$node.pid" || return 1; done
  sinfo -h >/dev/null 2>&1
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${seconds}s (logs: /var/log/slurm/, /var/log/munge/)"
}

nodes_idle() { [ "$(sinfo -h -N -o '%N %T' | sort -u | tr '\n' ' ')" = "n1 idle n2 idle " ]; }

if running_as_configured; then
  say "already running: $(sinfo -h -N -o '%N:%T:%G' | tr '\n' ' ')"
  exit 0
fi
"$HERE/stop.sh"

# Node names resolve to this host (slurmd -N looks its own name up).
grep -q "# slurm-local nodes" /etc/hosts || echo "127.0.0.1 ${NODES[*]} # slurm-local nodes" >> /etc/hosts
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST # slurm-local controller" >> /etc/hosts

mkdir -p /etc/slurm /run/munge /var/log/munge /var/lib/munge /run/slurm /var/log/slurm /var/spool/slurmctld
for node in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$node"; done
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chown slurm:slurm /run/slurm /var/log/slurm /var/spool/slurmctld

# munge: one key shared by every daemon of this host.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
wait_for 10 munged bash -c 'munge -n </dev/null | unmunge'
say "munged up"

# Fake GPUs: clones of /dev/null (major 1, minor 3) that GRES can hand out.
for g in $(seq 0 $((GPUS - 1))); do
  [ -e "/dev/fakegpu$g" ] || mknod "/dev/fakegpu$g" c 1 3 || die "cannot create /dev/fakegpu$g (mknod)"
done
gres_conf > /etc/slurm/gres.conf
slurm_conf > "$CONF"

slurmctld || die "slurmctld failed to start (see /var/log/slurm/slurmctld.log)"
wait_for 20 slurmctld sinfo -h
for node in "${NODES[@]}"; do
  slurmd -N "$node" || die "slurmd -N $node failed to start (see /var/log/slurm/slurmd-$node.log)"
done
wait_for 30 "nodes ${NODES[*]} (idle)" nodes_idle
srun --nodes=${#NODES[@]} --ntasks-per-node=1 true || die "smoke test 'srun --nodes=${#NODES[@]} true' failed"
say "ready: $(sinfo -h -N -o '%N:%T:%G' | tr '\n' ' ')"
