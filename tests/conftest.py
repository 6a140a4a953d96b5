"""Shared fixtures: paths to the shipped configs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def script_output(name: str) -> str:
    """What ``scripts/NAME`` prints (the README holds the output of the reference scripts)."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout


@pytest.fixture
def configs_dir() -> Path:
    return CONFIGS


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip unless the local SLURM cluster answers (CI starts it with scripts/local_slurm.sh)."""
    from tests.slurm_utils import require_slurm_cluster

    require_slurm_cluster()


@pytest.fixture(scope="session")
def two_nodes() -> list[str]:
    """The node names of a SLURM cluster with 2+ nodes (CI: scripts/local_slurm.sh start --nodes 2);
    skip otherwise."""
    from tests.slurm_utils import require_nodes

    return require_nodes(2)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (thread wake-ups cost more than they
    save on a shared machine); the previous count is restored after. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
