#!/usr/bin/env bash
# GPU check (under 10 minutes on one CUDA GPU): environment, the GPU-marked tests, the render
# benchmark on CUDA beside the CPU (and GalSim where it is installed), generation against the
# disk's raw write rate, predict's fields per second, the training loader, and the training
# step (phases, bf16, both tilings).
# Run from the repository root on a machine with a GPU:   bash scripts/gpu_check.sh
# Uses the active python (or $PYTHON) with the repository on PYTHONPATH; wheels of missing
# packages (e.g. omegaconf) may be placed in .whl/ and are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "== GPU tests"
timeout 180 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
status=$?
echo "== render benchmark: CUDA beside CPU"
skip=""
"$py" -c "import galsim" 2>/dev/null || { skip="--skip-galsim"; echo "(galsim not installed: no GalSim column)"; }
timeout 240 "$py" scripts/bench_render.py --n-galsim 2 --n-ours 128 --n-gpu 16384 $skip
echo "== generation on CUDA: one writer, sequential vs overlapped, against the disk's raw rate"
timeout 240 "$py" scripts/bench_generate.py --device cuda --shards 16 --images 256 --repeats 3 \
  --no-ranks
echo "== predict on CUDA: encoding throughput, five-band fields per second (goal >= 12)"
for batch in 19 266; do
  timeout 150 "$py" scripts/bench_predict.py configs/sdss_m2.yaml \
    survey.field=tests/data/sdss-cut/2583/2/136 --device cuda --fields 20 --batch-size "$batch"
done
echo "== training benchmark on m2 shards generated here (CUDA)"
data="$(mktemp -d)/m2"
timeout 120 "$py" -m hpc_bliss generate configs/m2.yaml generate.output_dir="$data" \
  generate.n_shards=4 >/dev/null && \
  timeout 180 "$py" scripts/bench_train.py "$data" --device cuda --batch 32 --steps 20 --workers 4
echo "== training step on CUDA: phases, channels_last and bf16 autocast, both tilings"
for tiling in independent checkerboard; do
  for batch in 32 128; do
    timeout 90 "$py" scripts/profile_train.py "$data" --device cuda --batch "$batch" --steps 10 \
      --rounds 3 model.tiling="$tiling"
  done
done
exit $status
