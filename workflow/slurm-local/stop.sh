#!/usr/bin/env bash
# Stop the local SLURM cluster of start.sh: cancel its jobs, then end each daemon through its own
# PID file (nothing else on the host is touched). Safe to run when nothing is running.
set -u

stop_daemon() {  # stop_daemon PIDFILE
  local pidfile=$1 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}

# Jobs first, while the controller can still reach the nodes: their steps outlive slurmd otherwise.
if [ -s /run/slurm/slurmctld.pid ] && kill -0 "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null; then
  jobs=$(squeue -h -t running,pending,completing,suspended -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    # shellcheck disable=SC2086
    scancel --quiet $jobs
    for _ in $(seq 50); do
      [ -z "$(squeue -h -t running,completing -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi
for pidfile in /run/slurm/slurmd-*.pid; do stop_daemon "$pidfile"; done
stop_daemon /run/slurm/slurmctld.pid
stop_daemon /run/munge/munged.pid
echo "slurm-local: stopped"
