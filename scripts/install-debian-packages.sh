#!/usr/bin/env bash
# Install the Debian 12 (bookworm) system packages this project needs outside Python:
#
#   munge          authentication daemon every SLURM daemon and client talks through
#   slurmctld      SLURM controller (the scheduler)           } used by tests/slurm_cluster.py
#   slurmd         SLURM compute-node daemon (runs the jobs)  } to bring up a one-node
#   slurm-client   sbatch, squeue, scontrol, sinfo, ...       } cluster on localhost
#   graphviz       `dot`, used to draw the workflow's DAG (snakemake --dag | dot -Tpng)
#
# Usage (as root, or as a user with sudo):  scripts/install-debian-packages.sh
#
# Idempotent: it asks dpkg which of the packages are already installed and, if all of them
# are, exits at once without touching the network. Otherwise it runs `apt-get update` once
# and installs only the missing ones, non-interactively.
#
# It never starts services: while it installs, a temporary /usr/sbin/policy-rc.d tells the
# packages' maintainer scripts not to start munged/slurmctld/slurmd. The tests start their
# own private daemons (tests/slurm_cluster.py) and a system daemon already holding the
# default ports or munge socket would only get in the way.
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client graphviz)

# Which of them are missing? "install ok installed" is dpkg's status of a fully set-up
# package; anything else (not known, half-configured, removed-but-config-left) needs apt.
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-debian-packages: all present (${PACKAGES[*]})"
    exit 0
fi

# Root runs apt directly; anyone else goes through sudo (and fails clearly without it).
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-debian-packages: missing ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "install-debian-packages: installing ${missing[*]}"

# Forbid service starts during the install, unless the machine already has its own policy
# (then we leave that file alone). The trap removes only the file we created.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\n# temporary, written by install-debian-packages.sh\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    created_policy=1
fi
cleanup() {
    if [[ $created_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"

echo "install-debian-packages: done"
