"""Training as a submitit job on SLURM, as local processes or in-process (``launch.cluster``).

    hpc-bliss submit train configs/m2.yaml train.devices=4 train.num_nodes=2 \\
        --nodes 2 --gpus-per-node 4 --partition gpu --time 120 --wait

The job is a :class:`TrainJob`, a checkpointable callable holding only the config's YAML text.
SLURM starts ``nodes × tasks_per_node`` tasks with srun; in each, Lightning's SLURMEnvironment
reads its rank from ``SLURM_*`` and spawns nothing. On a timeout (SLURM sends USR2 90 s before
the limit) or a preemption, submitit pickles :meth:`TrainJob.checkpoint` and requeues the job;
the rerun's ``train()`` resumes from ``<train.output_dir>/checkpoints/last.ckpt``.

Trainer ``devices``/``num_nodes`` must equal the job's tasks per node and nodes:
:func:`~hpc_bliss.launch.site.check_launch` refuses a mismatch before anything is submitted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedSubmissionError, UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.local.debug import DebugJob

from hpc_bliss.config import Config, load_config, to_yaml
from hpc_bliss.errors import ConfigError, LaunchError
from hpc_bliss.launch.shape import JobShape, training_cpus
from hpc_bliss.launch.site import check_launch, partition_and_account, partition_info


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
        from hpc_bliss.stages.train import train

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
    shape: JobShape,
    time_minutes: int,
    partition: str | None,
    account: str | None,
    name: str,
) -> submitit.AutoExecutor:
    """submitit's executor for ``cluster`` ("slurm", "local" or "debug") with the job's shape
    (whose ``cpus_per_task`` is set)."""
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:  # e.g. no srun on this machine
        raise LaunchError(f"--cluster {cluster}: {err}") from err
    params: dict[str, Any] = {
        "name": name,
        "nodes": shape.nodes,
        "tasks_per_node": shape.tasks_per_node,
        "gpus_per_node": shape.gpus_per_node or None,  # None: no --gpus-per-node line at all
        "cpus_per_task": shape.cpus_per_task,
        "timeout_min": time_minutes,
    }
    if cluster == "slurm":
        params.update(slurm_partition=partition, slurm_account=account)
        # --kill-on-bad-exit: a rank that dies ends the step, instead of its peers waiting in
        # DDP; --cpus-per-task: srun of Slurm 22.05-23.02 does not inherit it from sbatch
        srun = ["--kill-on-bad-exit=1", f"--cpus-per-task={shape.cpus_per_task}"]
        params["slurm_srun_args"] = srun
    executor.update_parameters(**params)
    return executor


def print_submitted(job: submitit.Job, cluster: str, what: str) -> None:
    """Say which job went where, where its logs are and how to follow it."""
    paths = job.task(0).paths
    print(f"[submit] job {job.job_id} ({cluster}): {what}")
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


def submit_train(
    cfg: Config,
    shape: JobShape,
    partition: str | None = None,
    time_minutes: int | None = None,
    account: str | None = None,
    folder: str | Path | None = None,
) -> submitit.Job:
    """Check, submit ``train(cfg)`` to ``cfg.launch.cluster``, print where its logs go; return
    the job.

    Unset values come from ``cfg.launch``, then (partition, account) from $SBATCH_PARTITION and
    $SBATCH_ACCOUNT. ``shape.cpus_per_task`` defaults to 1 + the DataLoader workers.
    """
    cluster = cfg.launch.cluster
    if cluster == "debug" and shape.tasks != 1:
        raise LaunchError(
            f"--cluster debug runs one process (this one), not "
            f"{shape.nodes}×{shape.tasks_per_node}: use --cluster local for several"
        )
    partition, account = partition_and_account(cfg.launch, partition, account)
    site = partition_info(partition) if cluster == "slurm" else None
    check_launch(cfg, shape, site)
    cfg = with_absolute_paths(cfg)
    if not (Path(cfg.train.data_dir) / "manifest.json").is_file():
        raise ConfigError(f"train.data_dir={cfg.train.data_dir}: no manifest.json (generate first)")
    folder = Path(folder).absolute() if folder else default_folder(cfg)
    shape = shape.with_cpus(training_cpus(cfg.train))
    minutes = time_minutes or cfg.launch.time_minutes
    name = "hpc-bliss-train"
    executor = make_executor(cluster, folder, shape, minutes, partition, account, name)
    config_yaml = to_yaml(cfg)
    try:
        job = executor.submit(TrainJob(config_yaml))
    except (FailedSubmissionError, UncompletedJobError) as err:  # sbatch said no
        raise LaunchError(f"submission to {cluster} failed: {err}") from err
    job.paths.folder.mkdir(parents=True, exist_ok=True)  # the debug executor makes none
    (job.paths.folder / f"{job.job_id}_config.yaml").write_text(config_yaml)
    what = (
        f"{name}, {shape.describe()}, {minutes} min, "
        f"partition {partition or '-'}, account {account or '-'}"
    )
    print_submitted(job, cluster, what)
    return job
