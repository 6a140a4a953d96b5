#!/bin/bash
# Catalog real survey fields on SLURM: `hpc-bliss predict` with one MPI rank per task. Rank r of
# W catalogs fields r, r+W, ...; with fewer fields than ranks, the ranks of a field share its
# crops. Each field gets <predict.output_dir>/<RUN-CAMCOL-FIELD>/catalog.h5, overlay.png and
# residual.png; fields already done are skipped, so resubmitting resumes. Any number of ranks
# gives the same catalogs.
#
# Submit from the repository root on a login node (the job runs in the submit directory):
#
#   mkdir -p logs       # sbatch does not create the --output directory
#   sbatch jobs/predict.sh ckpt=/scratch/t/checkpoints/best.ckpt \
#       'predict.fields=[/data/sdss/2583/2/136,/data/sdss/2583/2/137]' \
#       predict.output_dir=/scratch/catalogs                      # configs/sdss_m2.yaml
#   hpc-bliss submit predict configs/sdss_m2.yaml ckpt=... --nodes 2 --tasks-per-node 4
#
# Partition, account and QOS come from sbatch itself (-p/-A/-q, or SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_QOS); command-line options override every #SBATCH line below.
#
# Environment variables read by this script:
#   HPC_BLISS_CONFIG    config file, relative to the submit directory (default
#                       configs/sdss_m2.yaml)
#   HPC_BLISS_VENV      virtual environment to activate (default $SLURM_SUBMIT_DIR/.venv)
#   HPC_BLISS_MODULES   environment modules to `module load` first
#   HPC_BLISS_SRUN_MPI  srun's --mpi plugin (default pmix). With `none` every task would be
#                       rank 0 of 1 and catalog every field.
# Arguments after the script name are passed on as `key=value` config overrides; the
# checkpoint is one of them: predict.checkpoint=PATH (or its short form ckpt=PATH).
#
#SBATCH --job-name=hpc-bliss-predict
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=2
# GPUs: remove one '#' below (or pass --gpus-per-task=1) to give each rank one GPU;
# predict.device=auto then encodes on it.
##SBATCH --gpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

config="${HPC_BLISS_CONFIG:-configs/sdss_m2.yaml}"
srun_mpi="${HPC_BLISS_SRUN_MPI:-pmix}"
submit_dir="${SLURM_SUBMIT_DIR:-$PWD}"

job_env="${HPC_BLISS_ROOT:-$PWD}/jobs/job_env.sh"
if [[ ! -f $job_env ]]; then
  echo "ERROR: $job_env not found: submit from the repository root or set HPC_BLISS_ROOT" >&2
  exit 2
fi
# shellcheck source=jobs/job_env.sh
source "$job_env"

job_banner predict "$@"
run_step srun --mpi="$srun_mpi" --kill-on-bad-exit=1 \
  python -m hpc_bliss predict "$config" "$@"
