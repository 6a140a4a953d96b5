# Sourced by the jobs/*.sh batch scripts (never run on its own): loads $HPC_BLISS_MODULES,
# activates $HPC_BLISS_VENV (default: the submit directory's .venv), checks $config exists,
# passes the allocation's CPUs per task on to srun, and defines job_banner and run_step.
# Expects `config` and `submit_dir` (and `srun_mpi` where the job uses it).

# --- modules (Lmod and Environment Modules scripts are not written for `set -u`) ---------
if [[ -n "${HPC_BLISS_MODULES:-}" ]]; then
  if ! type module >/dev/null 2>&1; then
    for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh; do
      if [[ -r $init ]]; then
        set +u
        # shellcheck disable=SC1090
        source "$init"
        set -u
        break
      fi
    done
  fi
  if type module >/dev/null 2>&1; then
    read -ra modules <<<"${HPC_BLISS_MODULES//,/ }"
    set +u
    module load "${modules[@]}"
    set -u
  else
    echo "WARNING: HPC_BLISS_MODULES='$HPC_BLISS_MODULES' but no 'module' command: not loaded" >&2
  fi
fi

# --- Python environment -------------------------------------------------------------------
venv="${HPC_BLISS_VENV:-}"
if [[ -z $venv && -f "$submit_dir/.venv/bin/activate" ]]; then
  venv="$submit_dir/.venv"
fi
if [[ -n $venv ]]; then
  if [[ ! -f "$venv/bin/activate" ]]; then
    echo "ERROR: HPC_BLISS_VENV=$venv is not a virtual environment (no bin/activate)" >&2
    exit 2
  fi
  set +u
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  set -u
fi
if [[ ! -f $config ]]; then
  echo "ERROR: config $config not found (relative to $PWD); set HPC_BLISS_CONFIG" >&2
  exit 2
fi

# Slurm 22.05-23.02's srun does not inherit --cpus-per-task from the batch allocation.
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
  export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
fi
export PYTHONUNBUFFERED=1

# --- the log's banner and the job's one step (every jobs/*.sh ends with these two) --------
# job_banner STAGE ARGS...: what runs where, with which config and overrides (ARGS).
job_banner() {
  local stage=$1
  shift
  echo "=== hpc-bliss $stage: job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-}) ==="
  echo "start:     $(date -Is)"
  echo "nodes:     ${SLURM_JOB_NUM_NODES:-1} (${SLURM_JOB_NODELIST:-$(hostname)})"
  echo "tasks:     ${SLURM_NTASKS:-1} (${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-?}} per" \
    "node, ${SLURM_CPUS_PER_TASK:-?} CPUs per task, GPUs:" \
    "${SLURM_GPUS_PER_TASK:-${SLURM_GPUS_PER_NODE:-${SLURM_GPUS:-none}}})"
  echo "partition: ${SLURM_JOB_PARTITION:-?}  account: ${SLURM_JOB_ACCOUNT:-?}"
  echo "depends:   ${SLURM_JOB_DEPENDENCY:-none}"
  echo "config:    $config $*"
  echo "workdir:   $PWD"
  echo "python:    $(command -v python) ($(python -c 'import sys; print(sys.version.split()[0])'))"
  echo "srun:      --mpi=${srun_mpi:-(cluster default)}; modules: ${HPC_BLISS_MODULES:-none};" \
    "venv: ${venv:-none}"
}

# run_step COMMAND...: run the job's srun step, say how it ended, exit with its status.
run_step() {
  local start=$SECONDS status=0
  "$@" || status=$?
  echo "=== end: $(date -Is), $((SECONDS - start)) s, exit status $status ==="
  exit "$status"
}
