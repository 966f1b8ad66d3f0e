#!/usr/bin/env bash
# Install the Debian packages behind the local SLURM test cluster (start.sh beside this file):
# munge for authentication, the controller, the node daemon and the client commands. Run as root;
# does nothing when every binary is already there. Used by CI (.ci/run) and by `start.sh --install`.
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)
BINARIES=(munged slurmctld slurmd sinfo squeue sbatch srun scontrol scancel)

die() { echo "slurm-local/install.sh: $*" >&2; exit 1; }

missing=()
for binary in "${BINARIES[@]}"; do
  command -v "$binary" >/dev/null || [ -x "/usr/sbin/$binary" ] || missing+=("$binary")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "slurm-local: packages already installed"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root to apt-get install ${PACKAGES[*]}"
command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install ${PACKAGES[*]} (Slurm >= 22.05) by hand"
echo "slurm-local: apt-get install ${PACKAGES[*]}"
apt-get update -qq
# Debian images forbid service starts during install (policy-rc.d); start.sh starts the daemons itself.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
