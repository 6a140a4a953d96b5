#!/bin/bash
# Train the encoder on SLURM: `hpc-bliss train` with one DDP process per task (srun starts
# them; Lightning's SLURMEnvironment reads each one's rank from SLURM_* and spawns nothing).
#
# Submit from the repository root on a login node (the job runs in the submit directory):
#
#   mkdir -p logs       # sbatch does not create the --output directory; if it is missing the
#                       # job fails at once and writes no log at all
#   sbatch jobs/train.sh train.data_dir=/scratch/d train.output_dir=/scratch/t   # configs/m2.yaml
#   HPC_BLISS_CONFIG=configs/smoke.yaml sbatch jobs/train.sh train.max_epochs=1
#   sbatch -p gpu -A myproj --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 jobs/train.sh ...
#
# The Trainer must agree with the allocation, or DDP hangs waiting for processes that never
# come: train.devices = tasks per node (= GPUs per node on GPU nodes) and train.num_nodes = the
# node count. This script passes train.devices=$SLURM_NTASKS_PER_NODE and
# train.num_nodes=$SLURM_JOB_NUM_NODES itself, before your overrides, and refuses overrides of
# those two keys: change --ntasks-per-node/--nodes instead.
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
#                       e.g. "cuda/12.4 nccl" (skipped with a warning if there is no `module`)
# Arguments after the script name are passed on as `key=value` config overrides. Rerunning
# with the same train.output_dir (a resubmission, or SLURM requeueing a preempted job) resumes
# from <train.output_dir>/checkpoints/last.ckpt. For a job that checkpoints and requeues itself
# before its time limit, submit with `hpc-bliss submit train` (submitit) instead.
#
#SBATCH --job-name=hpc-bliss-train
# train.devices = --ntasks-per-node and train.num_nodes = --nodes (set below from these)
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
# GPUs: remove one '#' below (or pass --gpus-per-node=N to sbatch) and set --ntasks-per-node
# to the same N: one task per GPU. Some sites want --gres=gpu:N instead.
##SBATCH --gpus-per-node=2
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

config="${HPC_BLISS_CONFIG:-configs/m2.yaml}"
submit_dir="${SLURM_SUBMIT_DIR:-$PWD}"

# --- the Trainer's shape, from the allocation --------------------------------------------
for arg in "$@"; do
  case $arg in
    train.devices=* | train.num_nodes=*)
      echo "ERROR: $arg: this script sets train.devices and train.num_nodes from the" \
        "allocation; change --ntasks-per-node/--nodes instead" >&2
      exit 2
      ;;
  esac
done
# SLURM_TASKS_PER_NODE is set even without --ntasks-per-node: "2(x3)" (even) or "3,2" (uneven)
tasks_per_node="${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}"
if [[ $tasks_per_node == *,* ]]; then
  echo "ERROR: uneven tasks per node ($tasks_per_node): DDP needs the same number on every" \
    "node; submit with --ntasks-per-node" >&2
  exit 2
fi
tasks_per_node="${tasks_per_node%%(*}"
num_nodes="${SLURM_JOB_NUM_NODES:-1}"

# --- modules, Python environment, srun settings (shared by the jobs/*.sh scripts) ---------
job_env="${HPC_BLISS_ROOT:-$PWD}/jobs/job_env.sh"
if [[ ! -f $job_env ]]; then
  echo "ERROR: $job_env not found: submit from the repository root or set HPC_BLISS_ROOT" >&2
  exit 2
fi
# shellcheck source=jobs/job_env.sh
source "$job_env"

shape=(train.devices="$tasks_per_node" train.num_nodes="$num_nodes")
job_banner train "${shape[@]}" "$@"
run_step srun --kill-on-bad-exit=1 python -m hpc_bliss train "$config" "${shape[@]}" "$@"
