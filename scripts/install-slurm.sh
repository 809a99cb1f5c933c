#!/usr/bin/env bash
# Idempotent: Debian's SLURM daemons and munge for the single-node SLURM tests (tests/test_slurm.py).
# Quietly does nothing when not root, when apt-get is absent, or when everything is already installed.
set -euo pipefail
PACKAGES=(slurmctld slurmd slurm-client munge)
[ "$(id -u)" = 0 ] || exit 0
command -v apt-get >/dev/null || exit 0
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
