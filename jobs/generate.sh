#!/bin/bash
# Simulate a BLISS data set on SLURM: `hpc-bliss generate` with one MPI rank per task.
# Every rank is a writer: it claims a shard before making it (claims/ in the output directory),
# starting with shards r, r+W, ... and then helping with any shard nobody holds; the writer
# that finishes last writes manifest.json and dataset.h5. So any number of jobs may write one
# output directory at once: a job array, a resubmit, a rerun while an old job still runs.
#
# Submit from the repository root on a login node (the job runs in the submit directory):
#
#   mkdir -p logs       # sbatch does not create the --output directory; if it is missing the
#                       # job fails at once and writes no log at all
#   sbatch jobs/generate.sh                                   # configs/m2.yaml, as configured
#   HPC_BLISS_CONFIG=configs/smoke.yaml sbatch jobs/generate.sh generate.output_dir=/scratch/d
#   sbatch -p gpu -A myproj --nodes=4 --gpus-per-task=1 jobs/generate.sh generate.n_shards=512
#
# As a job array, each task is one writer (--ntasks-per-node=1) or an MPI job of its own:
#   sbatch --array=0-15 --ntasks-per-node=1 jobs/generate.sh generate.n_shards=512
#   sbatch --array=0-3 jobs/generate.sh generate.n_shards=512    # 4 tasks × 2 ranks
# Task i of T starts on shards i·W+r, ... of the T·W writers; the data are the same bytes
# whatever the mix of tasks and ranks. A writer that dies leaves a claim that another takes
# over: at once on the same host, else after generate.claim_timeout_minutes once squeue no
# longer lists its job.
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
#                       it is rank 0 of 1 and they would all write the same shards.
# Arguments after the script name are passed on as `key=value` config overrides (and flags
# such as --overwrite). The exit status is non-zero, and the job FAILED, if any shard failed:
# see `missing` and `failures` in <output_dir>/manifest.json; rerunning redoes only those.
#
#SBATCH --job-name=hpc-bliss-generate
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
# On CPU a writer renders with generate.cpu_threads (1) torch threads and writes on one more:
# two cores per task. For more speed, ask for more tasks (ranks), not more threads.
#SBATCH --cpus-per-task=2
# GPUs: remove one '#' below (or pass --gpus-per-task=1 to sbatch) to give each rank one GPU;
# generate.device=auto then renders on it. Some sites want --gres=gpu:N per node instead.
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

job_banner generate "$@"
run_step srun --mpi="$srun_mpi" --kill-on-bad-exit=1 \
  python -m hpc_bliss generate "$config" "$@"
