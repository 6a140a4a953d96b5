#!/usr/bin/env bash
# README command 2: run the test suite (extra arguments go to pytest, e.g. -m "not slow").
#
#   scripts/run_tests.sh [PYTEST ARGS]            needs only Python: MPI tests use pip's Open MPI
#   scripts/run_tests.sh --cluster [PYTEST ARGS]  everything, as CI does (root, Debian): installs
#       Open MPI, parallel HDF5 and SLURM from Debian, starts a two-node local SLURM
#       (scripts/local_slurm.sh), switches the venv to the system MPI, builds parallel h5py
#       (scripts/build_parallel_h5py.sh), then runs the whole suite. Nothing then skips but the
#       CUDA tests. The cluster stays up afterwards: scripts/local_slurm.sh stop.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = "--cluster" ]; then
  shift
  if [ "$(id -u)" -ne 0 ]; then
    echo "[run_tests] --cluster installs Debian packages and starts SLURM daemons: run it as root" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  echo "[run_tests] apt-get install openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config"
  apt-get update -qq </dev/null >/dev/null
  apt-get install -y -qq --no-install-recommends \
    openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config </dev/null >/dev/null
  "$root/scripts/local_slurm.sh" install
  "$root/scripts/local_slurm.sh" start --nodes 2
  # the system MPI is now found: setup_venv.sh removes the venv's pip MPI so the site's wins
  "$root/scripts/setup_venv.sh"
  "$root/scripts/build_parallel_h5py.sh"
fi
"$root/scripts/setup_venv.sh"
cd "$root"
exec "${HPC_BLISS_VENV:-$root/.venv}/bin/python" -m pytest "$@"
