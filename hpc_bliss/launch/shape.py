"""A job's shape: nodes, tasks per node, GPUs per node and CPUs per task, derived in one place
(:meth:`JobShape.derive`) from the command line's ``--nodes``/``--tasks-per-node``/
``--gpus-per-node``/``--cpus-per-task`` and the config's ``launch`` section, for every kind
of submitted job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hpc_bliss.config import LaunchConfig, TrainConfig


@dataclass(frozen=True)
class JobShape:
    """What a job asks for: ``nodes × tasks_per_node`` processes, each node with
    ``gpus_per_node`` GPUs (0: none asked for), each task with ``cpus_per_task`` CPUs (None:
    the job's own default, see :meth:`with_cpus`)."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int = 0
    cpus_per_task: int | None = None

    @classmethod
    def derive(
        cls,
        launch: LaunchConfig,
        nodes: int | None = None,
        tasks_per_node: int | None = None,
        gpus_per_node: int | None = None,
        cpus_per_task: int | None = None,
    ) -> JobShape:
        """The shape from the command line's values, where given (not None), else from
        ``launch``. Tasks per node default to the GPUs per node when there are GPUs (one task
        per GPU), else to ``launch.tasks_per_node``."""
        gpus = launch.gpus_per_node if gpus_per_node is None else gpus_per_node
        if tasks_per_node is None:
            tasks_per_node = gpus if gpus > 0 else launch.tasks_per_node
        return cls(
            nodes=launch.nodes if nodes is None else nodes,
            tasks_per_node=tasks_per_node,
            gpus_per_node=gpus,
            cpus_per_task=cpus_per_task,
        )

    @property
    def tasks(self) -> int:
        """Processes in all: nodes × tasks per node."""
        return self.nodes * self.tasks_per_node

    def with_cpus(self, default: int) -> JobShape:
        """This shape with ``cpus_per_task`` set to ``default`` unless it was given."""
        return self if self.cpus_per_task else replace(self, cpus_per_task=default)

    def describe(self) -> str:
        """``2 node(s) × 4 task(s), 4 GPU(s)/node`` (then ``, 5 CPU(s)/task`` where set)."""
        text = (
            f"{self.nodes} node(s) × {self.tasks_per_node} task(s), "
            f"{self.gpus_per_node} GPU(s)/node"
        )
        return text + (f", {self.cpus_per_task} CPU(s)/task" if self.cpus_per_task else "")


def training_cpus(train: TrainConfig) -> int:
    """CPUs per task a training process uses by default: itself and a core per DataLoader
    worker (``train.num_workers``; -1 means 2)."""
    workers = train.num_workers
    return 1 + (workers if workers >= 0 else 2)
