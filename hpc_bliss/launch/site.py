"""What the site offers and whether a job fits it: the partition and account to submit to (from
the command line, else ``launch.*``, else ``$SBATCH_*``), the partition as ``sinfo`` describes it
(:class:`Partition`), and :func:`check_launch`, which refuses a job shape that the Trainer or
the partition disagrees with before anything is queued.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import get_args, get_type_hints

from hpc_bliss.config import Config, LaunchConfig
from hpc_bliss.errors import LaunchError
from hpc_bliss.launch.shape import JobShape

#: where a job can run (``launch.cluster``): the choices of the config's type, in its order
CLUSTERS: tuple[str, ...] = get_args(get_type_hints(LaunchConfig)["cluster"])
HANG_HINT = (
    "These mismatches are the most common cause of DDP hangs on SLURM: Lightning waits for "
    "train.devices × train.num_nodes processes while SLURM starts tasks per node × nodes."
)


def site_value(given: str | None, configured: str, env_var: str) -> str | None:
    """``given`` (a command-line value), else ``configured`` (the config's), else ``$env_var``;
    None where all three are empty (sbatch's own default then applies)."""
    return given or configured or os.environ.get(env_var) or None


def partition_and_account(
    launch: LaunchConfig, partition: str | None = None, account: str | None = None
) -> tuple[str | None, str | None]:
    """The partition and account a job goes to: the given ones, else ``launch.partition`` and
    ``launch.account``, else $SBATCH_PARTITION and $SBATCH_ACCOUNT (None: sbatch decides)."""
    return (
        site_value(partition, launch.partition, "SBATCH_PARTITION"),
        site_value(account, launch.account, "SBATCH_ACCOUNT"),
    )


@dataclass(frozen=True)
class Partition:
    """What sinfo says of the partition a job goes to."""

    name: str
    nodes: int  #: nodes in it
    gpus_per_node: int  #: the most GPUs any of its nodes has


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


def launch_problems(cfg: Config, shape: JobShape, partition: Partition | None) -> list[str]:
    """Each way ``shape`` disagrees with the Trainer of ``cfg.train`` or cannot fit
    ``partition`` (where known), in words; empty when it fits."""
    t = cfg.train
    nodes, tasks, gpus = shape.nodes, shape.tasks_per_node, shape.gpus_per_node
    problems: list[str] = []
    if nodes < 1 or tasks < 1 or gpus < 0:
        problems.append(
            f"nodes={nodes}, tasks per node={tasks}, GPUs per node={gpus}: "
            "expected at least 1 node and 1 task per node, and no negative GPU count"
        )
    if t.devices != tasks:
        problems.append(f"train.devices={t.devices} but {tasks} task(s) per node")
    if t.num_nodes != nodes:
        problems.append(f"train.num_nodes={t.num_nodes} but {nodes} node(s)")
    if gpus > 0:
        if t.accelerator == "cpu":
            problems.append(f"train.accelerator=cpu but {gpus} GPU(s) per node")
        if t.devices != gpus:
            problems.append(
                f"train.devices={t.devices} but {gpus} GPU(s) per node "
                "(GPU runs use one task per GPU: devices = tasks per node = GPUs per node)"
            )
        if partition is not None and gpus > partition.gpus_per_node:
            problems.append(
                f"{gpus} GPU(s) per node requested, nodes of partition "
                f"{partition.name} have {partition.gpus_per_node}"
            )
    elif t.accelerator in ("gpu", "cuda"):
        problems.append(f"train.accelerator={t.accelerator} but 0 GPUs per node")
    if partition is not None and nodes > partition.nodes:
        problems.append(
            f"{nodes} node(s) requested, partition {partition.name} has {partition.nodes}"
        )
    return problems


def check_launch(cfg: Config, shape: JobShape, partition: Partition | None = None) -> None:
    """Refuse (:class:`LaunchError`) a job shape the Trainer of ``cfg.train`` disagrees with,
    or one the ``partition`` (where known) can never run: SLURM would queue it for ever.
    """
    problems = launch_problems(cfg, shape, partition)
    if problems:
        t = cfg.train
        raise LaunchError(
            "refusing to submit:\n  - "
            + "\n  - ".join(problems)
            + f"\n{HANG_HINT} Make them agree: pass train.devices={shape.tasks_per_node} "
            f"train.num_nodes={shape.nodes}, or --tasks-per-node {t.devices} --nodes {t.num_nodes}"
            + (f" --gpus-per-node {t.devices}" if shape.gpus_per_node > 0 else "")
            + "."
        )
