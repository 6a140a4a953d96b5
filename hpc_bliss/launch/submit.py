"""`hpc-bliss submit KIND CONFIG [overrides] [options]`: the command line of the launchers.

    hpc-bliss submit train configs/m2.yaml train.devices=4 train.num_nodes=2 \\
        --nodes 2 --gpus-per-node 4 --partition gpu --time 120 --wait
    hpc-bliss submit pipeline configs/m2.yaml --nodes 1 --tasks-per-node 2 --partition cpu

:func:`add_submit_parser` adds the command to the CLI; each kind of :data:`KINDS` reads the
job's shape from the options and the config (:meth:`JobShape.derive`) and hands it to its
launcher: ``train`` to :mod:`~hpc_bliss.launch.train_job` (submitit), ``pipeline`` to
:mod:`~hpc_bliss.launch.chain` (dependent sbatch jobs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hpc_bliss.config import LaunchConfig, load_config
from hpc_bliss.errors import LaunchError
from hpc_bliss.launch import chain, train_job
from hpc_bliss.launch.shape import JobShape
from hpc_bliss.launch.site import CLUSTERS
from hpc_bliss.predict.submit import cmd_submit_predict


def shape_from_args(args: argparse.Namespace, launch: LaunchConfig) -> JobShape:
    """The job's shape from the options of `submit` and the config's ``launch`` section."""
    return JobShape.derive(
        launch,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
    )


def cmd_submit_train(args: argparse.Namespace) -> int:
    """`hpc-bliss submit train`: a submitit job on ``--cluster`` (default launch.cluster)."""
    cluster = [f"launch.cluster={args.cluster}"] if args.cluster else []
    cfg = load_config(args.config, [*args.overrides, *cluster])
    job = train_job.submit_train(
        cfg,
        shape_from_args(args, cfg.launch),
        partition=args.partition,
        time_minutes=args.time,
        account=args.account,
        folder=args.folder,
    )
    # exit status: 0 submitted (or, waited for, completed), 1 the job failed
    waits = args.wait or cfg.launch.cluster == "debug"  # debug runs it here
    return train_job.wait_and_report(job) if waits else 0


def cmd_submit_pipeline(args: argparse.Namespace) -> int:
    """`hpc-bliss submit pipeline`: generate → train → evaluate as dependent SLURM jobs."""
    if args.cluster not in (None, "slurm"):
        raise LaunchError(f"submit pipeline queues SLURM jobs; --cluster {args.cluster} is not one")
    cfg = load_config(args.config, args.overrides)
    chain.submit_pipeline(
        cfg,
        args.config,
        args.overrides,
        shape_from_args(args, cfg.launch),
        partition=args.partition,
        account=args.account,
        time_minutes=args.time,
    )
    return 0


#: the kinds of job `submit` offers, and the command of each
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_submit_train,
    "pipeline": cmd_submit_pipeline,
    "predict": cmd_submit_predict,
}
KINDS = tuple(COMMANDS)


#: where jobs pickled before training moved to train_job.py find their class when requeued
TrainJob = train_job.TrainJob


def cmd_submit(args: argparse.Namespace) -> int:
    """`hpc-bliss submit KIND ...`: the command of that kind."""
    return COMMANDS[args.kind](args)


def add_submit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `submit` to the CLI's subparsers (``argparse._SubParsersAction``)."""
    text = "submit a stage as a job (SLURM via submitit, local processes, or in-process)"
    p = subparsers.add_parser("submit", help=text, description=text)
    p.add_argument(
        "kind",
        choices=KINDS,
        help="train, pipeline (generate → train → evaluate as dependent SLURM jobs), or "
        "predict (jobs/predict.sh: catalog predict.fields)",
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
    p.add_argument(
        "--cpus-per-task",
        type=int,
        help="default: train, 1 + DataLoader workers; pipeline, each job script's own",
    )
    p.add_argument("--partition", help="default launch.partition, then $SBATCH_PARTITION")
    p.add_argument("--account", help="default launch.account, then $SBATCH_ACCOUNT")
    p.add_argument(
        "--time",
        type=int,
        help="time limit, minutes (default: train, launch.time_minutes; "
        "pipeline, each job script's own)",
    )
    p.add_argument("--cluster", choices=CLUSTERS, help="default launch.cluster")
    p.add_argument("--folder", help="submitit folder (default <train.output_dir>/submitit/<new>)")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.set_defaults(func=cmd_submit)
    return p
