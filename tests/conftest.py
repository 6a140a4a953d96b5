"""Shared fixtures: paths to the shipped configs."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


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
