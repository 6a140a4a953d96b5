#!/usr/bin/env bash
# Rebuild h5py in a virtual environment against Debian's parallel HDF5 (Open MPI), for the
# optional collective output mode `hpc-bliss generate generate.io=mpio`.
#
#   scripts/build_parallel_h5py.sh [VENV]      (default: .venv, or $HPC_BLISS_VENV)
#
# The h5py wheels on PyPI are serial (h5py.get_config().mpi is False); the default
# generate.io=files needs nothing more. This script:
#   1. installs libhdf5-openmpi-dev openmpi-bin libopenmpi-dev pkg-config with apt-get when
#      missing (needs root, Debian/Ubuntu);
#   2. compiles the h5py version already installed in VENV (same version, no upgrade) from
#      source with CC=mpicc HDF5_MPI=ON against the hdf5-openmpi pkg-config module.
# It does nothing when the venv's h5py is already parallel. Set H5PY_VERSION to build another
# version, HDF5_PKGCONFIG_NAME for another parallel HDF5 module, BUILD_JOBS for the compiler
# processes (default 2).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${HPC_BLISS_VENV:-$root/.venv}}"
py="$venv/bin/python"
pkg_name="${HDF5_PKGCONFIG_NAME:-hdf5-openmpi}"
start=$SECONDS

if [ ! -x "$py" ]; then
  echo "[parallel-h5py] no virtual environment at $venv (run scripts/setup_venv.sh first)" >&2
  exit 2
fi
is_parallel() {
  "$py" -c 'import sys, h5py; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null
}
if is_parallel; then
  echo "[parallel-h5py] h5py in $venv is already built against parallel HDF5: nothing to do"
  exit 0
fi

# 1. System packages: parallel HDF5, Open MPI's compiler wrapper, pkg-config.
debs=(libhdf5-openmpi-dev openmpi-bin libopenmpi-dev pkg-config)
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$deb")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[parallel-h5py] apt-get install ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! pkg-config --exists "$pkg_name"; then
  echo "[parallel-h5py] pkg-config module $pkg_name not found: is parallel HDF5 installed?" >&2
  exit 2
fi

# 2. Build dependencies, then h5py itself (the installed version unless H5PY_VERSION is set).
version="${H5PY_VERSION:-$("$py" -c 'import h5py; print(h5py.__version__)' 2>/dev/null || true)}"
spec="h5py${version:+==$version}"
echo "[parallel-h5py] building $spec against $pkg_name $(pkg-config --modversion "$pkg_name")" \
  "in $venv"
"$py" -m pip install --quiet Cython pkgconfig 'setuptools>=77' packaging numpy mpi4py wheel
cfg="$(mktemp)"
trap 'rm -f "$cfg"' EXIT
printf '[build_ext]\nparallel=%s\n' "${BUILD_JOBS:-2}" >"$cfg"
CC=mpicc HDF5_MPI=ON HDF5_PKGCONFIG_NAME="$pkg_name" DIST_EXTRA_CONFIG="$cfg" \
  "$py" -m pip install --quiet --no-binary=h5py --no-build-isolation --force-reinstall \
  --no-deps --no-cache-dir "$spec"

if ! is_parallel; then
  echo "[parallel-h5py] built $spec, but h5py.get_config().mpi is still False" >&2
  exit 1
fi
"$py" -c 'import h5py; print("[parallel-h5py] h5py", h5py.__version__, "HDF5",
          h5py.version.hdf5_version, "mpi", h5py.get_config().mpi)'
echo "[parallel-h5py] done in $((SECONDS - start)) s"
