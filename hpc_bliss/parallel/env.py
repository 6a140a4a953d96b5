"""Where this process sits: rank, world size, local rank, and its device; which MPI it uses.

The launchers' variables are read from one table (as submitit does), never scattered.
MPI is initialised only when a launcher started this process (mpirun, srun --mpi=pmix).

Which MPI: ``HPC_BLISS_MPI=system|pip|none`` (default ``auto``). ``scripts/setup_venv.sh``
installs Open MPI from pip into the venv only where no system MPI is found; mpi4py then loads
the venv's libmpi, and :func:`mpirun_command` returns the venv's ``mpirun`` to match it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpc_bliss.errors import LaunchError

MPI_CHOICES = ("auto", "system", "pip", "none")

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


def mpi_choice() -> str:
    """``HPC_BLISS_MPI`` (auto, system, pip or none; default auto)."""
    choice = os.environ.get("HPC_BLISS_MPI", "auto").strip().lower() or "auto"
    if choice not in MPI_CHOICES:
        raise LaunchError(f"HPC_BLISS_MPI={choice!r}: expected one of {', '.join(MPI_CHOICES)}")
    return choice


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def mpi_problem() -> str | None:
    """Why mpi4py cannot use an MPI library here (one line), or None when it can.

    Loads no MPI: it only checks that mpi4py imports and that a libmpi is found where mpi4py
    looks (this environment's lib/ first, then the system's library path)."""
    if mpi_choice() == "none":
        return "HPC_BLISS_MPI=none"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    names = ["libmpi.so", "libmpi.so.12", "libmpi.so.40"]
    # mpi4py's own search: MPI4PY_LIBMPI alone when set, else this environment's lib/ first
    candidates = os.environ.get("MPI4PY_LIBMPI", "").split(os.pathsep)
    if candidates == [""]:
        candidates = [str(Path(sys.exec_prefix) / "lib" / n) for n in names] + names
    for name in candidates:
        try:
            ctypes.CDLL(name, os.RTLD_LAZY | os.RTLD_LOCAL).MPI_Get_version  # noqa: B018
            return None
        except (OSError, AttributeError):
            continue
    return "no MPI library (libmpi.so) found: scripts/setup_venv.sh installs one from pip"


def mpirun_command() -> str | None:
    """The ``mpirun`` that matches the MPI mpi4py loads: this environment's own (pip's Open
    MPI, next to the Python that runs), else the first on PATH; None when there is none."""
    own = _venv_bin() / "mpirun"
    if own.is_file() and mpi_choice() != "system":
        return str(own)
    return shutil.which("mpirun")


def mpirun_prefix(processes: int) -> list[str] | None:
    """``[mpirun, -n, N]`` (plus ``--oversubscribe`` for more ranks than cores) with the
    ``mpirun`` that matches mpi4py's MPI; None where no MPI is usable here."""
    command = mpirun_command()
    if mpi_problem() or command is None:
        return None
    extra = ["--oversubscribe"] if processes > (os.cpu_count() or 1) else []
    return [command, "-n", str(processes), *extra]


def single_process_note() -> str:
    """One line saying why this process runs alone (printed by generate and evaluate)."""
    problem = mpi_problem()
    if problem:
        return f"one process: MPI is not available ({problem})"
    return "one process: not started by mpirun or srun"


def detect(use_mpi: bool | None = None) -> ProcessEnv:
    """The process layout; with ``use_mpi`` None, MPI is used iff an MPI launcher is detected."""
    if use_mpi is None:
        use_mpi = under_mpi_launcher()
    if use_mpi:
        try:
            from mpi4py import MPI
        except (ImportError, RuntimeError) as err:
            why = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise LaunchError(
                f"started by an MPI launcher, but mpi4py cannot load MPI ({why}); use the "
                "mpirun of the MPI mpi4py was installed for, or HPC_BLISS_MPI (see README)"
            ) from err
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        return ProcessEnv(
            comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(), comm
        )
    return ProcessEnv(0, 1, 0, 1, None)


def pick_device(spec: str, env: ProcessEnv) -> torch.device:
    """``auto``: cuda:(local_rank % device_count) when CUDA is present, else the CPU. Changes
    nothing in the process: :func:`using_device` does, for the span of a stage."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device(spec)


def cpu_share(env: ProcessEnv) -> int:
    """Torch threads for this rank: a rank pinned to its own cores (srun --cpus-per-task)
    keeps them all; ranks sharing the node's cores split them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = cores if cores and cores < (os.cpu_count() or 1) else (cores or 1) // env.local_world
    return max(1, share)


@contextmanager
def using_device(
    device: torch.device, env: ProcessEnv, threads: int | None = None
) -> Iterator[torch.device]:
    """Within the block, make ``device`` the current CUDA device, or give the CPU ``threads``
    torch threads (default: this rank's share, :func:`cpu_share`); the process's previous
    settings are restored after."""
    if device.type == "cuda":
        previous = torch.cuda.current_device()
        torch.cuda.set_device(device)
        try:
            yield device
        finally:
            torch.cuda.set_device(previous)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_share(env))
    try:
        yield device
    finally:
        torch.set_num_threads(previous)
