#!/usr/bin/env bash
# `make test-cluster`: install and start a one-node Slurm cluster on localhost, run the smoke
# target through `snakemake --profile profiles/slurm` on it and with `--cores 2` here, check
# the submissions and compare the outputs (tests/cluster/cluster_run.py), stop the cluster.
# Needs root and apt-get (Debian/Ubuntu). Usage: tests/cluster/run.sh [python of the venv]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${1:-.venv/bin/python}
WORKDIR=${BACKLENS_CLUSTER_WORKDIR:-/tmp/backlens-cluster-test}
start=$(date +%s)
tests/cluster/slurm_cluster.sh install
tests/cluster/slurm_cluster.sh up
# Whatever happens below, nothing stays running.
trap 'tests/cluster/slurm_cluster.sh down' EXIT
"$PYTHON" tests/cluster/cluster_run.py --workdir "$WORKDIR"
echo "test-cluster: wall time $(( $(date +%s) - start )) s (install, start, both runs, checks; stop follows)"
