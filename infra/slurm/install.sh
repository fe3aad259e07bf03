#!/bin/sh
# Install Slurm and munge (Debian/Ubuntu) for the single-node test cluster, if missing.
# Idempotent; needs root. Exits 0 without installing when not root (the Slurm tests then skip).
set -eu
if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
   && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
  echo "slurm and munge already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: cannot install slurm-wlm and munge (the Slurm tests will be skipped)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get: install Slurm (slurmctld, slurmd, sbatch) and munge by hand" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge
