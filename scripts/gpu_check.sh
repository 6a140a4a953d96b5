#!/usr/bin/env bash
# GPU check (under 5 minutes on one CUDA GPU): environment, the GPU-marked tests, and the
# render benchmark on CUDA. Run from the repository root on a machine with a GPU:
#     bash scripts/gpu_check.sh
# Uses the active python (or $PYTHON); installs the package editable if it is not importable.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! "$py" -c "import hpc_bliss, galsim, pytest" 2>/dev/null; then
  "$py" -m pip install --quiet -e ".[test]" 2>&1 | tail -3
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "== GPU tests"
timeout 150 "$py" -m pytest -q -m gpu -p no:cacheprovider tests
status=$?
echo "== render benchmark (CUDA and CPU; GalSim on 2 images)"
timeout 150 "$py" scripts/bench_render.py --n-galsim 2 --n-ours 64 --n-gpu 8192
exit $status
