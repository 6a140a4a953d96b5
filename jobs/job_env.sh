# Sourced by the jobs/*.sh batch scripts (never run on its own): loads $HPC_BLISS_MODULES,
# activates $HPC_BLISS_VENV (default: the submit directory's .venv), checks $config exists,
# and passes the allocation's CPUs per task on to srun. Expects `config` and `submit_dir`.

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
