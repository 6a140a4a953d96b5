"""The `pipeline` stage: generate → train → evaluate on this machine, each stage a subprocess
of ``python -m hpc_bliss``, each resuming what is already done: generation and evaluation as
``processes`` MPI ranks (when an MPI that mpi4py can load is here; else one process, saying
so), training as ``processes`` DDP processes (CPU/gloo, or one per GPU).

The stages find each other's outputs through the config itself (``train.data_dir`` and
``evaluate.data_dir`` follow ``generate.output_dir``; ``evaluate.checkpoint`` is the best
checkpoint under ``train.output_dir``), so the same overrides go to every stage.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from hpc_bliss.config import Config
from hpc_bliss.errors import LaunchError
from hpc_bliss.parallel.env import mpi_problem, mpirun_prefix


def local_mpirun(processes: int) -> list[str] | None:
    """An `mpirun -n N` prefix when N > 1 and an MPI that mpi4py can load is here, else None
    (after one line saying why the MPI stages run as one process)."""
    if processes < 2:
        return None
    prefix = mpirun_prefix(processes)
    if prefix is None:
        why = mpi_problem() or "no mpirun found (on PATH or beside this Python)"
        print(f"[pipeline] MPI is not available ({why}): generate and evaluate run as 1 process")
    return prefix


def _run_stage(name: str, cmd: list[str]) -> None:
    # Open MPI refuses to start as root without these two; harmless otherwise
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise LaunchError(f"pipeline stage '{name}' failed: {shlex.join(cmd)}")


def run(cfg: Config, config: str | Path, overrides: list[str], processes: int) -> int:
    """Run the three stages of ``config`` + ``overrides`` (``cfg`` is their loaded config)."""
    n = max(1, processes)
    common = [sys.executable, "-m", "hpc_bliss"]
    args = [str(config), *overrides]
    mpirun = local_mpirun(n) or []
    ranks = int(mpirun[2]) if mpirun else 1
    print(f"[pipeline] 1/3 generate → {cfg.generate.output_dir} ({ranks} rank(s))", flush=True)
    _run_stage("generate", [*mpirun, *common, "generate", *args])
    gpus = torch.cuda.device_count()
    devices = min(n, gpus) if gpus else n
    accel = "gpu" if gpus else "cpu"
    out = cfg.train.output_dir
    print(f"[pipeline] 2/3 train → {out} ({devices} {accel} process(es))", flush=True)
    shape = [f"train.devices={devices}", f"train.accelerator={accel}"]
    _run_stage("train", [*common, "train", *args, *shape])
    e = cfg.evaluate
    print(f"[pipeline] 3/3 evaluate {e.checkpoint} → {e.output_dir} ({ranks} rank(s))", flush=True)
    _run_stage("evaluate", [*mpirun, *common, "evaluate", *args])
    print(
        f"[pipeline] done: {e.output_dir}/report.md, {e.output_dir}/confusion.png, "
        f"{e.output_dir}/detection_vs_mag.png, {e.output_dir}/example.png"
    )
    return 0
