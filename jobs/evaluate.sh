#!/bin/bash
# Evaluate a trained encoder on SLURM: `hpc-bliss evaluate` with one MPI rank per task (rank r
# of W scores test shards r, r+W, ...; rank 0 adds up the counts and writes report.json,
# report.md and the PNGs to evaluate.output_dir). 2 ranks give exactly the numbers of 1.
#
# Submit from the repository root on a login node (the job runs in the submit directory):
#
#   mkdir -p logs       # sbatch does not create the --output directory; if it is missing the
#                       # job fails at once and writes no log at all
#   sbatch jobs/evaluate.sh evaluate.checkpoint=/scratch/t/checkpoints/best.ckpt \
#       evaluate.data_dir=/scratch/d evaluate.output_dir=/scratch/e       # configs/m2.yaml
#   HPC_BLISS_CONFIG=configs/smoke.yaml sbatch jobs/evaluate.sh \
#       ckpt=runs/smoke/train/checkpoints/best.ckpt
#   sbatch --dependency=afterok:<train job id> jobs/evaluate.sh evaluate.checkpoint=...
#   hpc-bliss submit pipeline configs/m2.yaml ...   # queues generate → train → evaluate
#
# Nothing site-specific is written here. Partition, account and QOS come from sbatch itself:
# the command line (-p/--partition, -A/--account, -q/--qos) or sbatch's environment variables
# SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_QOS (e.g. exported in ~/.bashrc or a site file; see
# configs/site/example.yaml). Command-line options also override every #SBATCH line below.
#
# Environment variables read by this script (sbatch passes the submitting shell's environment
# to the job unless your site sets SBATCH_EXPORT=NONE; then use --export=ALL):
#   HPC_BLISS_CONFIG    config file, relative to the submit directory (default configs/m2.yaml)
#   HPC_BLISS_VENV      virtual environment to activate (default $SLURM_SUBMIT_DIR/.venv when
#                       it exists; else the python on PATH is used)
#   HPC_BLISS_MODULES   environment modules to `module load` first, space- or comma-separated,
#                       e.g. "openmpi/4.1 hdf5" (skipped with a warning if there is no `module`)
#   HPC_BLISS_SRUN_MPI  srun's --mpi plugin (default pmix; it must start mpi4py ranks, e.g.
#                       pmi2 for an MPICH-based mpi4py). With `none` every task would believe
#                       it is rank 0 of 1: each would score every shard and write the report.
# Arguments after the script name are passed on as `key=value` config overrides; the
# checkpoint is one of them: evaluate.checkpoint=PATH (or its short form ckpt=PATH).
#
#SBATCH --job-name=hpc-bliss-evaluate
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
# GPUs: remove one '#' below (or pass --gpus-per-task=1 to sbatch) to give each rank one GPU;
# generate.device=auto (also used by evaluate) then runs the encoder on it.
##SBATCH --gpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

config="${HPC_BLISS_CONFIG:-configs/m2.yaml}"
srun_mpi="${HPC_BLISS_SRUN_MPI:-pmix}"
submit_dir="${SLURM_SUBMIT_DIR:-$PWD}"

# --- modules, Python environment, srun settings (shared by the jobs/*.sh scripts) ---------
job_env="${HPC_BLISS_ROOT:-$PWD}/jobs/job_env.sh"
if [[ ! -f $job_env ]]; then
  echo "ERROR: $job_env not found: submit from the repository root or set HPC_BLISS_ROOT" >&2
  exit 2
fi
# shellcheck source=jobs/job_env.sh
source "$job_env"

job_banner evaluate "$@"
run_step srun --mpi="$srun_mpi" --kill-on-bad-exit=1 \
  python -m hpc_bliss evaluate "$config" "$@"
