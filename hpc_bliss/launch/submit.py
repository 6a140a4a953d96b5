"""`hpc-bliss submit`: run a stage as a submitit job on SLURM, as local processes, or in-process.

    hpc-bliss submit train configs/m2.yaml train.devices=4 train.num_nodes=2 \\
        --nodes 2 --gpus-per-node 4 --partition gpu --time 120 --wait

The job is a :class:`TrainJob`, a checkpointable callable holding only the config's YAML text.
SLURM starts ``nodes × tasks_per_node`` tasks with srun; in each, Lightning's SLURMEnvironment
reads its rank from ``SLURM_*`` and spawns nothing. On a timeout (SLURM sends USR2 90 s before
the limit) or a preemption, submitit pickles :meth:`TrainJob.checkpoint` and requeues the job;
the rerun's ``train()`` resumes from ``<train.output_dir>/checkpoints/last.ckpt``.

Trainer ``devices``/``num_nodes`` must equal the job's tasks per node and nodes:
:func:`check_launch` refuses a mismatch before anything is submitted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedSubmissionError, UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.local.debug import DebugJob

from hpc_bliss.config import Config, load_config, to_yaml
from hpc_bliss.errors import ConfigError, LaunchError

KINDS = ("generate", "train", "evaluate", "pipeline")
CLUSTERS = ("slurm", "local", "debug")
HANG_HINT = (
    "These mismatches are the most common cause of DDP hangs on SLURM: Lightning waits for "
    "train.devices × train.num_nodes processes while SLURM starts tasks per node × nodes."
)


@dataclass(frozen=True)
class Partition:
    """What sinfo says of the partition a job goes to."""

    name: str
    nodes: int  #: nodes in it
    gpus_per_node: int  #: the most GPUs any of its nodes has


def check_launch(
    cfg: Config,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int,
    partition: Partition | None = None,
) -> None:
    """Refuse (:class:`LaunchError`) a job shape the Trainer of ``cfg.train`` disagrees with,
    or one the ``partition`` (where known) can never run: SLURM would queue it for ever.
    """
    t = cfg.train
    problems: list[str] = []
    if nodes < 1 or tasks_per_node < 1 or gpus_per_node < 0:
        problems.append(
            f"nodes={nodes}, tasks per node={tasks_per_node}, GPUs per node={gpus_per_node}: "
            "expected at least 1 node and 1 task per node, and no negative GPU count"
        )
    if t.devices != tasks_per_node:
        problems.append(f"train.devices={t.devices} but {tasks_per_node} task(s) per node")
    if t.num_nodes != nodes:
        problems.append(f"train.num_nodes={t.num_nodes} but {nodes} node(s)")
    if gpus_per_node > 0:
        if t.accelerator == "cpu":
            problems.append(f"train.accelerator=cpu but {gpus_per_node} GPU(s) per node")
        if t.devices != gpus_per_node:
            problems.append(
                f"train.devices={t.devices} but {gpus_per_node} GPU(s) per node "
                "(GPU runs use one task per GPU: devices = tasks per node = GPUs per node)"
            )
        if partition is not None and gpus_per_node > partition.gpus_per_node:
            problems.append(
                f"{gpus_per_node} GPU(s) per node requested, nodes of partition "
                f"{partition.name} have {partition.gpus_per_node}"
            )
    elif t.accelerator in ("gpu", "cuda"):
        problems.append(f"train.accelerator={t.accelerator} but 0 GPUs per node")
    if partition is not None and nodes > partition.nodes:
        problems.append(
            f"{nodes} node(s) requested, partition {partition.name} has {partition.nodes}"
        )
    if problems:
        raise LaunchError(
            "refusing to submit:\n  - "
            + "\n  - ".join(problems)
            + f"\n{HANG_HINT} Make them agree: pass train.devices={tasks_per_node} "
            f"train.num_nodes={nodes}, or --tasks-per-node {t.devices} --nodes {t.num_nodes}"
            + (f" --gpus-per-node {t.devices}" if gpus_per_node > 0 else "")
            + "."
        )


def gres_gpus(gres: str) -> int:
    """GPUs in one `sinfo %G` field: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)`` → 4, 4, 0."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def partition_info(partition: str | None) -> Partition | None:
    """``partition`` (else the default one) as sinfo sees it; None where sinfo cannot say."""
    cmd = ["sinfo", "-h", "-o", "%P|%D|%G"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2]
    if out.returncode != 0 or not rows:
        return None
    # one row per partition and node state (and GRES): a partition's rows add up
    if partition:
        mine = [r for r in rows if r[0].rstrip("*") == partition]
    else:
        mine = [r for r in rows if r[0].endswith("*")]
    if not mine:
        return None  # sbatch itself will name an unknown partition
    return Partition(
        name=mine[0][0].rstrip("*"),
        nodes=sum(int(r[1]) for r in mine if r[1].isdigit()),
        gpus_per_node=max(gres_gpus(r[2]) for r in mine),
    )


def config_from_yaml(text: str) -> Config:
    """The :class:`Config` of a YAML text, loaded and validated by ``load_config``."""
    with tempfile.TemporaryDirectory(prefix="hpc-bliss-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        return load_config(path)


def local_ddp_env(environ: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables for a task of submitit's LocalExecutor (empty elsewhere).

    With them Lightning's TorchElasticEnvironment sees processes started from outside, as
    SLURMEnvironment does under srun, and spawns none itself.
    """
    if environ.get("SUBMITIT_EXECUTOR") != "local":
        return {}
    ntasks = environ.get("SUBMITIT_LOCAL_NTASKS", "1")
    if int(ntasks) < 2:
        return {}
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(15000 + int(environ["SUBMITIT_LOCAL_JOB_ID"]) % 10000),
        "WORLD_SIZE": ntasks,
        "RANK": environ["SUBMITIT_LOCAL_GLOBALID"],
        "LOCAL_RANK": environ["SUBMITIT_LOCAL_LOCALID"],
        "LOCAL_WORLD_SIZE": ntasks,
        "GROUP_RANK": "0",
    }


def _forget_stale_result() -> None:
    """Drop this task's result file from an earlier run of a requeued job (e.g. the error of a
    rank killed by the requeue), so a waiting client does not take it for this run's outcome."""
    if "SUBMITIT_FOLDER" in os.environ:  # set by submitit's job runner (not in debug mode)
        submitit.JobEnvironment().paths.result_pickle.unlink(missing_ok=True)


class TrainJob(Checkpointable):
    """``train(cfg)`` as a submitit job; it pickles as plain text (the config's YAML)."""

    def __init__(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml

    def __call__(self) -> dict[str, Any]:
        from hpc_bliss.train.run import train

        _forget_stale_result()
        os.environ.update(local_ddp_env(os.environ))
        return train(config_from_yaml(self.config_yaml))

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on timeout/preemption: requeue this same job; ``train()`` resumes
        from last.ckpt (nothing else to save: the config is the whole state)."""
        return DelayedSubmission(self)


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with train.data_dir/output_dir absolute, so the job finds them from anywhere."""
    t = cfg.train
    train = replace(
        t, data_dir=str(Path(t.data_dir).absolute()), output_dir=str(Path(t.output_dir).absolute())
    )
    return replace(cfg, train=train)


def default_folder(cfg: Config) -> Path:
    """A new folder per submission, ``<train.output_dir>/submitit/<date>-<time>-<random>``
    (submitit names files by job id, and job ids restart when a SLURM controller is reset)."""
    base = Path(cfg.train.output_dir).absolute() / "submitit"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base))


def make_executor(
    cluster: str,
    folder: Path,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int,
    cpus_per_task: int,
    time_minutes: int,
    partition: str | None,
    account: str | None,
    name: str,
) -> submitit.AutoExecutor:
    """submitit's executor for ``cluster`` ("slurm", "local" or "debug") with the job's shape."""
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:  # e.g. no srun on this machine
        raise LaunchError(f"--cluster {cluster}: {err}") from err
    params: dict[str, Any] = {
        "name": name,
        "nodes": nodes,
        "tasks_per_node": tasks_per_node,
        "gpus_per_node": gpus_per_node or None,  # None: no --gpus-per-node line at all
        "cpus_per_task": cpus_per_task,
        "timeout_min": time_minutes,
    }
    if cluster == "slurm":
        params.update(slurm_partition=partition, slurm_account=account)
        # --kill-on-bad-exit: a rank that dies ends the step, instead of its peers waiting in
        # DDP; --cpus-per-task: srun of Slurm 22.05-23.02 does not inherit it from sbatch
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1", f"--cpus-per-task={cpus_per_task}"]
    executor.update_parameters(**params)
    return executor


def _site_value(given: str | None, configured: str, env_var: str) -> str | None:
    return given or configured or os.environ.get(env_var) or None


def print_submitted(job: submitit.Job, cluster: str, shape: str) -> None:
    paths = job.task(0).paths
    print(f"[submit] job {job.job_id} ({cluster}): {shape}")
    print(f"[submit] folder: {paths.folder}")
    if cluster == "debug":  # runs in this process: its output comes here
        return
    print(f"[submit] logs:   {paths.stdout} (rank 0; stderr: {paths.stderr.name})")
    print(f"[submit] follow: tail -f {paths.stdout}")
    if cluster == "slurm":
        print(f"[submit] state:  squeue -j {job.job_id}; sacct -j {job.job_id}")


def wait_and_report(job: submitit.Job) -> int:
    """Wait for ``job``; print its result (0) or that it failed and where its log is (1)."""
    paths = job.task(0).paths
    debug = isinstance(job, DebugJob)
    try:
        # debug: run here and now; DebugJob.result() would open pdb on an error
        result = job.submission().result() if debug else job.results()[0]
    except UncompletedJobError as err:
        print(f"[submit] job {job.job_id} FAILED; log: {paths.stdout}", file=sys.stderr)
        print("\n".join(str(err).splitlines()[-25:]), file=sys.stderr)
        return 1
    except Exception:
        if not debug:
            raise
        print(traceback.format_exc(), file=sys.stderr)
        print(f"[submit] job {job.job_id} FAILED (in-process debug run)", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result["metrics"].items()))
    print(f"[submit] job {job.job_id} COMPLETED: step {result['global_step']}; {metrics}")
    print(f"[submit] checkpoints: {result['best'] or '-'} (best), {result['last']} (last)")
    return 0


def submit_job(
    kind: str,
    cfg: Config,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int,
    partition: str | None = None,
    time_minutes: int | None = None,
    account: str | None = None,
    cluster: str | None = None,
    folder: str | Path | None = None,
    cpus_per_task: int | None = None,
) -> submitit.Job:
    """Check, submit the ``kind`` stage of ``cfg``, print where its logs go; return the job.

    Unset values come from ``cfg.launch``, then (partition, account) from $SBATCH_PARTITION and
    $SBATCH_ACCOUNT. ``cpus_per_task`` defaults to 1 + the DataLoader workers.
    """
    if kind != "train":
        raise LaunchError(f"submit {kind}: not yet implemented (only 'train' so far)")
    cluster = cluster or cfg.launch.cluster
    if cluster not in CLUSTERS:
        raise LaunchError(f"cluster {cluster!r}: expected one of {CLUSTERS}")
    if cluster == "debug" and nodes * tasks_per_node != 1:
        raise LaunchError(
            f"--cluster debug runs one process (this one), not {nodes}×{tasks_per_node}: "
            "use --cluster local for several"
        )
    partition = _site_value(partition, cfg.launch.partition, "SBATCH_PARTITION")
    account = _site_value(account, cfg.launch.account, "SBATCH_ACCOUNT")
    site = partition_info(partition) if cluster == "slurm" else None
    check_launch(cfg, nodes, tasks_per_node, gpus_per_node, site)
    cfg = with_absolute_paths(cfg)
    if not (Path(cfg.train.data_dir) / "manifest.json").is_file():
        raise ConfigError(f"train.data_dir={cfg.train.data_dir}: no manifest.json (generate first)")
    folder = Path(folder).absolute() if folder else default_folder(cfg)
    workers = cfg.train.num_workers
    cpus = cpus_per_task or (1 + (workers if workers >= 0 else 2))  # a core per loader worker
    minutes = time_minutes or cfg.launch.time_minutes
    name = f"hpc-bliss-{kind}"
    executor = make_executor(
        cluster,
        folder,
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus,
        time_minutes=minutes,
        partition=partition,
        account=account,
        name=name,
    )
    config_yaml = to_yaml(cfg)
    try:
        job = executor.submit(TrainJob(config_yaml))
    except (FailedSubmissionError, UncompletedJobError) as err:  # sbatch said no
        raise LaunchError(f"submission to {cluster} failed: {err}") from err
    job.paths.folder.mkdir(parents=True, exist_ok=True)  # the debug executor makes none
    (job.paths.folder / f"{job.job_id}_config.yaml").write_text(config_yaml)
    shape = (
        f"{name}, {nodes} node(s) × {tasks_per_node} task(s), {gpus_per_node} GPU(s)/node, "
        f"{cpus} CPU(s)/task, {minutes} min, partition {partition or '-'}, account {account or '-'}"
    )
    print_submitted(job, cluster, shape)
    return job


def add_submit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `submit` to the CLI's subparsers (``argparse._SubParsersAction``)."""
    text = "submit a stage as a job (SLURM via submitit, local processes, or in-process)"
    p = subparsers.add_parser("submit", help=text, description=text)
    p.add_argument(
        "kind",
        choices=KINDS,
        help="train, or pipeline (generate → train → evaluate as dependent SLURM jobs)",
    )
    p.add_argument("config", help="YAML config file, e.g. configs/m2.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.devices=4")
    p.add_argument("--nodes", type=int, help="nodes (default launch.nodes)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default launch.gpus_per_node)")
    p.add_argument(
        "--tasks-per-node",
        type=int,
        help="processes per node; must equal train.devices "
        "(default: --gpus-per-node if > 0, else launch.tasks_per_node)",
    )
    p.add_argument("--cpus-per-task", type=int, help="default: 1 + DataLoader workers")
    p.add_argument("--partition", help="default launch.partition, then $SBATCH_PARTITION")
    p.add_argument("--account", help="default launch.account, then $SBATCH_ACCOUNT")
    p.add_argument("--time", type=int, help="time limit, minutes (default launch.time_minutes)")
    p.add_argument("--cluster", choices=CLUSTERS, help="default launch.cluster")
    p.add_argument("--folder", help="submitit folder (default <train.output_dir>/submitit/<new>)")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.set_defaults(func=cmd_submit)
    return p


def cmd_submit(args: argparse.Namespace) -> int:
    if args.kind == "pipeline":
        from hpc_bliss.launch.chain import cmd_submit_pipeline

        return cmd_submit_pipeline(args)
    cfg = load_config(args.config, args.overrides)
    launch = cfg.launch
    gpus = launch.gpus_per_node if args.gpus_per_node is None else args.gpus_per_node
    tasks = args.tasks_per_node
    if tasks is None:
        tasks = gpus if gpus > 0 else launch.tasks_per_node
    job = submit_job(
        args.kind,
        cfg,
        nodes=launch.nodes if args.nodes is None else args.nodes,
        tasks_per_node=tasks,
        gpus_per_node=gpus,
        partition=args.partition,
        time_minutes=args.time,
        account=args.account,
        cluster=args.cluster,
        folder=args.folder,
        cpus_per_task=args.cpus_per_task,
    )
    # exit status: 0 submitted (or, waited for, completed), 1 the job failed
    waits = args.wait or (args.cluster or launch.cluster) == "debug"  # debug runs it here
    return wait_and_report(job) if waits else 0
