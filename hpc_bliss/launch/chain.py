"""`hpc-bliss submit pipeline`: queue generate → train → evaluate on SLURM in one command.

    hpc-bliss submit pipeline configs/m2.yaml --nodes 1 --tasks-per-node 2 --partition cpu

Three batch jobs, each held by SLURM until the one before it has COMPLETED
(``--dependency=afterok:<id>``; ``--kill-on-invalid-dep=yes`` cancels the rest of the chain
when a stage fails, instead of leaving it pending for ever):

1. ``jobs/generate.sh``: one MPI rank per task writes the shards to ``generate.output_dir``;
2. ``jobs/train.sh``: one DDP process per task reads them (``train.data_dir`` follows
   ``generate.output_dir`` in the config) and writes
   ``<train.output_dir>/checkpoints/best.ckpt``;
3. ``jobs/evaluate.sh``: one MPI rank per task scores that checkpoint (``evaluate.checkpoint``
   follows ``train.output_dir``) on the test shards and writes the report to
   ``evaluate.output_dir``.

Every job gets the three output directories as absolute paths (the paths that follow them are
then absolute too) and runs in the repository root, so the command works from any directory.
Logs: ``<log_dir>/hpc-bliss-<stage>-<job id>.out``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from hpc_bliss.config import Config, load_config
from hpc_bliss.errors import LaunchError
from hpc_bliss.launch.shape import JobShape
from hpc_bliss.launch.site import check_launch, partition_and_account, partition_info

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


def job_config(
    config_path: Path, cfg: Config, overrides: Sequence[str]
) -> tuple[list[str], Config]:
    """The overrides every job gets (``overrides`` less the Trainer's shape, plus
    the output directories of ``cfg`` made absolute) and the config the jobs load with them.

    Refuses (:class:`LaunchError`) a config or override that unwires the stages: the train and
    evaluate data must be what generate writes, the checkpoint what train writes.
    """
    if any(o.startswith("ckpt=") for o in overrides):
        raise LaunchError(
            "submit pipeline evaluates the checkpoint it trains "
            "(<train.output_dir>/checkpoints/best.ckpt): drop ckpt="
        )
    dirs = {
        "generate.output_dir": cfg.generate.output_dir,
        "train.output_dir": cfg.train.output_dir,
        "evaluate.output_dir": cfg.evaluate.output_dir,
    }
    common = [o for o in overrides if not o.startswith(SHAPE_KEYS)]
    common += [f"{key}={Path(value).absolute()}" for key, value in dirs.items()]
    job = load_config(config_path, common)
    wiring = {
        "train.data_dir": (job.train.data_dir, job.generate.output_dir),
        "evaluate.data_dir": (job.evaluate.data_dir, job.generate.output_dir),
        "evaluate.checkpoint": (
            job.evaluate.checkpoint,
            str(Path(job.train.output_dir) / "checkpoints" / "best.ckpt"),
        ),
    }
    unwired = [f"{k}={got}, not {want}" for k, (got, want) in wiring.items() if got != want]
    if unwired:
        raise LaunchError(
            "submit pipeline trains on the data it generates and evaluates the checkpoint it "
            "trains, but " + "; ".join(unwired) + ": drop these settings (by default they follow "
            "generate.output_dir and train.output_dir)"
        )
    return common, job


def job_environ(environ: Mapping[str, str], config: Path, root: Path) -> dict[str, str]:
    """The jobs' environment: ``environ`` plus the config, the repository and the venv."""
    env = dict(environ)
    env["HPC_BLISS_CONFIG"] = str(config)
    env["HPC_BLISS_ROOT"] = str(root)
    if "HPC_BLISS_VENV" not in env and sys.prefix != sys.base_prefix:
        env["HPC_BLISS_VENV"] = sys.prefix  # the venv of this command, wherever it lives
    return env


def sbatch_command(
    root: Path,
    logs: Path,
    shape: JobShape,
    partition: str | None,
    account: str | None,
    time_minutes: int | None,
) -> list[str]:
    """The sbatch command line every stage shares (its script and dependency follow)."""
    cmd = ["sbatch", "--parsable", f"--chdir={root}", f"--output={logs}/%x-%j.out"]
    cmd += [f"--nodes={shape.nodes}", f"--ntasks-per-node={shape.tasks_per_node}"]
    cmd += [f"--cpus-per-task={shape.cpus_per_task}"] if shape.cpus_per_task else []
    cmd += [f"--partition={partition}"] if partition else []
    cmd += [f"--account={account}"] if account else []
    cmd += [f"--time={time_minutes}"] if time_minutes else []
    cmd += [f"--gpus-per-node={shape.gpus_per_node}"] if shape.gpus_per_node > 0 else []
    return cmd


def sbatch_job(what: str, cmd: list[str], env: Mapping[str, str], cwd: Path) -> str:
    """Run ``cmd`` (sbatch --parsable ...); the job id, or :class:`LaunchError` that starts
    with ``what`` (e.g. "pipeline stage 'train'")."""
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
        raise LaunchError(f"{what}: sbatch did not run: {err}") from err
    job_id = out.stdout.strip().split(";")[0]
    if out.returncode != 0 or not job_id.isdigit():
        detail = (out.stderr.strip() or out.stdout.strip() or "(no output)")[-2000:]
        raise LaunchError(
            f"{what}: sbatch failed (exit status {out.returncode}):\n"
            f"  {detail}\n  command: {shlex.join(cmd)}"
        )
    return job_id


def queue_stages(
    sbatch: list[str], overrides: list[str], env: Mapping[str, str], root: Path
) -> dict[str, str]:
    """Queue ``jobs/<stage>.sh overrides`` for each of :data:`STAGES`, each after the one
    before it; ``{stage: job id}``. Where sbatch refuses one, the stages already queued are
    cancelled and :class:`LaunchError` names the stage."""
    ids: dict[str, str] = {}
    try:
        for i, stage in enumerate(STAGES):
            after = ids[STAGES[i - 1]] if i else None
            dep = [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"] if after else []
            script = str(root / "jobs" / f"{stage}.sh")
            ids[stage] = sbatch_job(
                f"pipeline stage '{stage}'", [*sbatch, *dep, script, *overrides], env, root
            )
    except LaunchError as err:
        if ids:
            queued = ",".join(ids.values())
            subprocess.run(["scancel", *ids.values()], capture_output=True, check=False)
            raise LaunchError(f"{err}\n  (cancelled the stages already queued: {queued})") from err
        raise
    return ids


def print_queued(
    ids: Mapping[str, str], logs: Path, job: Config, what: str, user: str | None
) -> None:
    """Say what was queued (``what``: shape, site and config), each stage's job and log, where
    the results go and how to follow, watch and cancel the jobs."""
    print(f"[pipeline] {what}")
    for i, stage in enumerate(STAGES):
        dep = f" after {STAGES[i - 1]} {ids[STAGES[i - 1]]} (afterok)" if i else ""
        print(f"[pipeline] {stage:<8} job {ids[stage]}{dep}: {log_path(logs, stage, ids[stage])}")
    e = job.evaluate
    print(
        f"[pipeline] data {e.data_dir}; checkpoint {e.checkpoint}; report {e.output_dir}/report.md"
    )
    all_ids = ",".join(ids.values())
    print(f"[pipeline] state:  squeue -u {user or '$USER'}; sacct -j {all_ids}")
    print(f"[pipeline] follow: tail -f {logs}/hpc-bliss-*-{{{all_ids}}}.out")
    print(f"[pipeline] cancel: scancel {' '.join(ids.values())}")


def submit_pipeline(
    cfg: Config,
    config_path: str | Path,
    overrides: Sequence[str],
    shape: JobShape,
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
    $SBATCH_ACCOUNT; ``time_minutes`` and ``shape.cpus_per_task`` (None: each script's own)
    apply to every job. ``log_dir`` defaults to ``<repo>/logs``; ``environ`` (default
    os.environ) is the jobs' environment. A refused submission raises :class:`LaunchError`
    naming the stage, after cancelling the stages already queued.
    """
    overrides = list(overrides)
    config = Path(config_path).absolute()
    partition, account = partition_and_account(cfg.launch, partition, account)
    # train.sh sets train.devices/num_nodes from the allocation: check that shape, unless the
    # caller named one explicitly (then it must agree, as for `submit train`)
    if not any(o.startswith(SHAPE_KEYS) for o in overrides):
        trainer = replace(cfg.train, devices=shape.tasks_per_node, num_nodes=shape.nodes)
        cfg = replace(cfg, train=trainer)
    common, job = job_config(config, cfg, overrides)
    check_launch(cfg, shape, partition_info(partition))

    root = repo_root()
    logs = Path(log_dir).absolute() if log_dir else root / "logs"
    logs.mkdir(parents=True, exist_ok=True)  # sbatch does not create it: no log at all
    env = job_environ(os.environ if environ is None else environ, config, root)
    sbatch = sbatch_command(root, logs, shape, partition, account, time_minutes)
    ids = queue_stages(sbatch, common, env, root)

    where = f"{shape.describe()}, partition {partition or '-'}, account {account or '-'}"
    print_queued(ids, logs, job, f"{where}; config {config}", env.get("USER"))
    return ids
