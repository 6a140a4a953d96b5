"""`hpc-bliss submit pipeline`: queue generate → train → evaluate on SLURM in one command.

    hpc-bliss submit pipeline configs/m2.yaml --nodes 1 --tasks-per-node 2 --partition cpu

Three batch jobs, each held by SLURM until the one before it has COMPLETED
(``--dependency=afterok:<id>``; ``--kill-on-invalid-dep=yes`` cancels the rest of the chain
when a stage fails, instead of leaving it pending for ever):

1. ``jobs/generate.sh``: one MPI rank per task writes the shards to ``generate.output_dir``;
2. ``jobs/train.sh``: one DDP process per task reads them (``train.data_dir`` is set to
   ``generate.output_dir``) and writes ``<train.output_dir>/checkpoints/best.ckpt``;
3. ``jobs/evaluate.sh``: one MPI rank per task scores that checkpoint on the test shards and
   writes the report to ``evaluate.output_dir``.

Every path handed to a job is absolute and every job runs in the repository root, so the
command works from any directory. Logs: ``<log_dir>/hpc-bliss-<stage>-<job id>.out``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from hpc_bliss.config import Config, load_config
from hpc_bliss.errors import LaunchError
from hpc_bliss.launch.submit import _site_value, check_launch, partition_info

STAGES = ("generate", "train", "evaluate")
#: the Trainer's shape: jobs/train.sh sets these two from the allocation and refuses overrides
SHAPE_KEYS = ("train.devices=", "train.num_nodes=")


def repo_root() -> Path:
    """The repository holding ``jobs/`` (the batch scripts run from there)."""
    env_root = os.environ.get("HPC_BLISS_ROOT")
    candidates = [Path(env_root)] if env_root else []
    candidates += [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "jobs" / "generate.sh").is_file():
            return root.resolve()
    raise LaunchError(
        "jobs/generate.sh not found next to the hpc_bliss package nor in the current directory: "
        "run from the repository root or set HPC_BLISS_ROOT"
    )


def log_path(log_dir: Path, stage: str, job_id: str) -> Path:
    """Where the ``stage`` job's output goes (``--output=<log_dir>/%x-%j.out``)."""
    return log_dir / f"hpc-bliss-{stage}-{job_id}.out"


def _sbatch(stage: str, cmd: list[str], env: Mapping[str, str], cwd: Path) -> str:
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=dict(env),
            cwd=cwd,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError(f"pipeline stage '{stage}': sbatch did not run: {err}") from err
    job_id = out.stdout.strip().split(";")[0]
    if out.returncode != 0 or not job_id.isdigit():
        detail = (out.stderr.strip() or out.stdout.strip() or "(no output)")[-2000:]
        raise LaunchError(
            f"pipeline stage '{stage}': sbatch failed (exit status {out.returncode}):\n"
            f"  {detail}\n  command: {shlex.join(cmd)}"
        )
    return job_id


def submit_pipeline(
    cfg: Config,
    config_path: str | Path,
    overrides: Sequence[str],
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int,
    partition: str | None = None,
    account: str | None = None,
    time_minutes: int | None = None,
    *,
    log_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Queue generate → train → evaluate with SLURM dependencies; print the job ids, their logs
    and how to follow them; return ``{"generate": id, "train": id, "evaluate": id}``.

    ``cfg`` is ``config_path`` loaded with ``overrides`` (the jobs load it again, with the same
    overrides). ``partition``/``account`` default to ``cfg.launch``, then $SBATCH_PARTITION and
    $SBATCH_ACCOUNT; ``time_minutes`` (None: each script's own limit) applies to every job.
    ``log_dir`` defaults to ``<repo>/logs``; ``environ`` (default os.environ) is the jobs'
    environment. A refused submission raises :class:`LaunchError` naming the stage, after
    cancelling the stages already queued.
    """
    overrides = list(overrides)
    if any(o.startswith(("ckpt=", "evaluate.checkpoint=")) for o in overrides):
        raise LaunchError(
            "submit pipeline evaluates the checkpoint it trains "
            "(<train.output_dir>/checkpoints/best.ckpt): drop ckpt=/evaluate.checkpoint="
        )
    partition = _site_value(partition, cfg.launch.partition, "SBATCH_PARTITION")
    account = _site_value(account, cfg.launch.account, "SBATCH_ACCOUNT")
    # train.sh sets train.devices/num_nodes from the allocation: check that shape, unless the
    # caller named one explicitly (then it must agree, as for `submit train`)
    explicit_shape = any(o.startswith(SHAPE_KEYS) for o in overrides)
    shaped = (
        cfg
        if explicit_shape
        else replace(cfg, train=replace(cfg.train, devices=tasks_per_node, num_nodes=nodes))
    )
    check_launch(shaped, nodes, tasks_per_node, gpus_per_node, partition_info(partition))

    root = repo_root()
    config = Path(config_path).absolute()
    logs = Path(log_dir).absolute() if log_dir else root / "logs"
    logs.mkdir(parents=True, exist_ok=True)  # sbatch does not create it: no log at all
    data = Path(cfg.generate.output_dir).absolute()
    train_out = Path(cfg.train.output_dir).absolute()
    eval_out = Path(cfg.evaluate.output_dir).absolute()
    ckpt = train_out / "checkpoints" / "best.ckpt"
    paths = [
        f"generate.output_dir={data}",
        f"train.data_dir={data}",
        f"train.output_dir={train_out}",
        f"evaluate.data_dir={data}",
        f"evaluate.output_dir={eval_out}",
    ]
    common = [o for o in overrides if not o.startswith(SHAPE_KEYS)] + paths

    env = dict(os.environ if environ is None else environ)
    env["HPC_BLISS_CONFIG"] = str(config)
    env["HPC_BLISS_ROOT"] = str(root)
    if "HPC_BLISS_VENV" not in env and sys.prefix != sys.base_prefix:
        env["HPC_BLISS_VENV"] = sys.prefix  # the venv of this command, wherever it lives

    base = ["sbatch", "--parsable", f"--chdir={root}", f"--output={logs}/%x-%j.out"]
    base += [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}"]
    base += [f"--partition={partition}"] if partition else []
    base += [f"--account={account}"] if account else []
    base += [f"--time={time_minutes}"] if time_minutes else []
    base += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node > 0 else []
    jobs = root / "jobs"
    args = {
        "generate": [str(jobs / "generate.sh"), *common],
        "train": [str(jobs / "train.sh"), *common],
        "evaluate": [str(jobs / "evaluate.sh"), *common, f"evaluate.checkpoint={ckpt}"],
    }

    ids: dict[str, str] = {}
    try:
        for stage in STAGES:
            after = ids[STAGES[STAGES.index(stage) - 1]] if ids else None
            dep = [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"] if after else []
            ids[stage] = _sbatch(stage, [*base, *dep, *args[stage]], env, root)
    except LaunchError as err:
        if ids:
            queued = ",".join(ids.values())
            subprocess.run(["scancel", *ids.values()], capture_output=True, check=False)
            raise LaunchError(f"{err}\n  (cancelled the stages already queued: {queued})") from err
        raise

    where = f"partition {partition or '-'}, account {account or '-'}"
    print(
        f"[pipeline] {nodes} node(s) × {tasks_per_node} task(s), {gpus_per_node} GPU(s)/node, "
        f"{where}; config {config}"
    )
    for i, stage in enumerate(STAGES):
        dep = f" after {STAGES[i - 1]} {ids[STAGES[i - 1]]} (afterok)" if i else ""
        print(f"[pipeline] {stage:<8} job {ids[stage]}{dep}: {log_path(logs, stage, ids[stage])}")
    print(f"[pipeline] data {data}; checkpoint {ckpt}; report {eval_out}/report.md")
    all_ids = ",".join(ids.values())
    print(f"[pipeline] state:  squeue -u {env.get('USER') or '$USER'}; sacct -j {all_ids}")
    print(f"[pipeline] follow: tail -f {logs}/hpc-bliss-*-{{{all_ids}}}.out")
    print(f"[pipeline] cancel: scancel {' '.join(ids.values())}")
    return ids


def cmd_submit_pipeline(args: argparse.Namespace) -> int:
    """`hpc-bliss submit pipeline CONFIG [overrides]` (the arguments of `submit`'s parser)."""
    cfg = load_config(args.config, args.overrides)
    launch = cfg.launch
    if getattr(args, "cluster", None) not in (None, "slurm"):
        raise LaunchError(f"submit pipeline queues SLURM jobs; --cluster {args.cluster} is not one")
    gpus = launch.gpus_per_node if args.gpus_per_node is None else args.gpus_per_node
    tasks = args.tasks_per_node
    if tasks is None:
        tasks = gpus if gpus > 0 else launch.tasks_per_node
    submit_pipeline(
        cfg,
        args.config,
        args.overrides,
        nodes=launch.nodes if args.nodes is None else args.nodes,
        tasks_per_node=tasks,
        gpus_per_node=gpus,
        partition=args.partition,
        account=args.account,
        time_minutes=args.time,
    )
    return 0
