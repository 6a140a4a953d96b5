"""Helpers for the tests that start MPI ranks: the mpirun that matches mpi4py's MPI (pip's
Open MPI in the venv on a machine without a system MPI, the system's otherwise)."""

import os

import pytest

from hpc_bliss.parallel.env import mpi_problem, mpirun_prefix
from tests.conftest import ROOT

#: mpirun as root needs these two (Open MPI); PYTHONPATH lets a driver script import tests.*
MPI_ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}

#: parallel HDF5 has no pip distribution: it needs the system's (Debian's libhdf5-openmpi-dev)
PARALLEL_H5PY_HINT = (
    "h5py is not built against parallel HDF5 (h5py.get_config().mpi is False), which no pip "
    "package provides: run `scripts/run_tests.sh --cluster` (as root), or "
    "scripts/build_parallel_h5py.sh"
)


def mpirun(n: int) -> list[str]:
    """``[mpirun, -n, N]``; fails (does not skip) where no MPI is usable: scripts/setup_venv.sh
    installs one from pip wherever there is no system MPI."""
    prefix = mpirun_prefix(n)
    if prefix is None:
        pytest.fail(
            f"no usable MPI ({mpi_problem() or 'no mpirun'}); scripts/setup_venv.sh installs "
            "Open MPI from pip where there is no system MPI"
        )
    return prefix
