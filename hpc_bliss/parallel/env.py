"""Where this process sits: rank, world size, local rank, and its device.

The launchers' variables are read from one table (as submitit does), never scattered.
MPI is initialised only when a launcher started this process (mpirun, srun --mpi=pmix).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

#: concept → environment variables that carry it, first found wins
ENV_TABLE: dict[str, tuple[str, ...]] = {
    "rank": ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"),
    "world": ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"),
    "local_rank": ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"),
    "local_world": ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"),
}
#: any of these means an MPI launcher started us (srun alone sets only SLURM_*)
MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK")


def _lookup(concept: str, default: int) -> int:
    for var in ENV_TABLE[concept]:
        value = os.environ.get(var)
        if value:
            try:
                return int(value.split("(")[0].split(",")[0])
            except ValueError:
                continue
    return default


@dataclass
class ProcessEnv:
    """This process's place in the job; ``comm`` is an mpi4py communicator or None."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    comm: Any = None

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def gather(self, obj: Any) -> list[Any] | None:
        """Gather ``obj`` to rank 0 (a list there, None elsewhere)."""
        if self.comm is None:
            return [obj]
        return self.comm.gather(obj, root=0)

    def bcast(self, obj: Any) -> Any:
        return obj if self.comm is None else self.comm.bcast(obj, root=0)


def under_mpi_launcher() -> bool:
    return any(os.environ.get(v) for v in MPI_MARKERS)


def detect(use_mpi: bool | None = None) -> ProcessEnv:
    """The process layout; with ``use_mpi`` None, MPI is used iff an MPI launcher is detected."""
    if use_mpi is None:
        use_mpi = under_mpi_launcher()
    if use_mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        return ProcessEnv(
            comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(), comm
        )
    return ProcessEnv(0, 1, 0, 1, None)


def pick_device(spec: str, env: ProcessEnv) -> torch.device:
    """``auto``: cuda:(local_rank % device_count) when CUDA is present, else the CPU with
    ``torch.set_num_threads`` matched to this rank's share of the cores it may use."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # a rank pinned to its own cores (srun --cpus-per-task) keeps them all; ranks sharing
    # the node's cores split them
    share = cores if cores and cores < (os.cpu_count() or 1) else (cores or 1) // env.local_world
    torch.set_num_threads(max(1, share))
    return torch.device(spec)
