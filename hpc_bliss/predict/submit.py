"""`hpc-bliss submit predict`: queue jobs/predict.sh from the login node.

    hpc-bliss submit predict configs/sdss_m2.yaml ckpt=runs/t/checkpoints/best.ckpt \\
        'predict.fields=[/data/sdss/2583/2/136,/data/sdss/2583/2/137]' --nodes 2 --tasks-per-node 4

One batch job of ``--nodes`` × ``--tasks-per-node`` MPI ranks (``srun``), run in the repository
root with the config, checkpoint, fields and output directory as absolute paths (so the
command works from any directory). Its log is ``<repo>/logs/hpc-bliss-predict-<job id>.out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hpc_bliss.config import load_config
from hpc_bliss.launch.chain import job_environ, log_path, repo_root, sbatch_command, sbatch_job
from hpc_bliss.launch.site import partition_and_account


def absolute_overrides(overrides: list[str], cfg) -> list[str]:
    """``overrides`` (``ckpt=`` spelled out) plus the checkpoint, fields and output directory
    of ``cfg`` as absolute paths."""
    out = ["predict.checkpoint=" + o[5:] if o.startswith("ckpt=") else o for o in overrides]
    p = cfg.predict
    fields = ",".join(str(Path(f).absolute()) for f in p.fields)
    return [
        *out,
        f"predict.checkpoint={Path(p.checkpoint).absolute()}",
        f"predict.fields=[{fields}]",
        f"predict.output_dir={Path(p.output_dir).absolute()}",
    ]


def cmd_submit_predict(args: argparse.Namespace) -> int:
    """`hpc-bliss submit predict`: sbatch jobs/predict.sh with the config and overrides."""
    from hpc_bliss.launch.submit import shape_from_args

    overrides = [
        "predict.checkpoint=" + o[5:] if o.startswith("ckpt=") else o for o in args.overrides
    ]
    cfg = load_config(args.config, overrides)
    shape = shape_from_args(args, cfg.launch)
    partition, account = partition_and_account(cfg.launch, args.partition, args.account)
    root = repo_root()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)  # sbatch does not create it: no log at all
    env = job_environ(os.environ, Path(args.config).absolute(), root)
    cmd = sbatch_command(root, logs, shape, partition, account, args.time)
    cmd += [str(root / "jobs" / "predict.sh"), *absolute_overrides(overrides, cfg)]
    job_id = sbatch_job("submit predict", cmd, env, root)
    print(
        f"[predict] job {job_id}: {shape.describe()}, {len(cfg.predict.fields)} field(s) → "
        f"{Path(cfg.predict.output_dir).absolute()}; log {log_path(logs, 'predict', job_id)}"
    )
    return 0
