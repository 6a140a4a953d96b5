#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv, or $HPC_BLISS_VENV).
# Re-installs only when pyproject.toml changed since the last successful install.
# torch is pinned to 2.13.0 for CPU installs: that CPU wheel is what this machine kind has on
# disk, and an unpinned torch would download a CUDA build of several GB. On a GPU cluster,
# install the torch build your site recommends first (HPC_BLISS_TORCH="" skips the pin).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HPC_BLISS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
torch_spec="${HPC_BLISS_TORCH-torch==2.13.0}"
extras="${HPC_BLISS_EXTRAS:-test}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.hpc-bliss-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16) $torch_spec $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing hpc-bliss[$extras] into $venv (first time: ~1 minute)"
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ -n "$torch_spec" ]; then
  "$venv/bin/python" -m pip install --quiet "$torch_spec"
fi
"$venv/bin/python" -m pip install --quiet -e "$root[$extras]"
echo "$want" > "$stamp"
echo "[setup] done"
