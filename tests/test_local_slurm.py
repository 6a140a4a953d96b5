"""The local SLURM cluster of scripts/local_slurm.sh: batch jobs, MPI ranks through PMIx, sacct.

These tests use a cluster that is already up (CI starts it with
`scripts/local_slurm.sh install && scripts/local_slurm.sh start`); they skip only when there is
none.
"""

import sys
from pathlib import Path

import pytest

from tests.slurm_utils import run as _run
from tests.slurm_utils import sacct_state as _sacct_state

pytestmark = pytest.mark.slurm


MPI_PROGRAM = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "print(f'rank {c.Get_rank()} size {c.Get_size()}', flush=True)"
)


def test_srun_two_tasks(slurm_cluster: None) -> None:
    out = _run("srun", "-n", "2", "hostname", timeout=30)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 2


def test_sbatch_mpi_job_ranks_and_accounting(slurm_cluster: None, tmp_path: Path) -> None:
    ranks_file = tmp_path / "ranks.txt"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --job-name=hpc-bliss-test-mpi\n"
        "#SBATCH --ntasks=2\n"
        "#SBATCH --time=1\n"
        f"#SBATCH --output={tmp_path}/slurm-%j.out\n"
        f'srun --mpi=pmix --output={ranks_file} "{sys.executable}" -c "{MPI_PROGRAM}"\n'
    )
    submit = _run("sbatch", "--parsable", "--wait", f"--chdir={tmp_path}", str(script), timeout=50)
    job_id = submit.stdout.strip().split(";")[0]
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert submit.returncode == 0, f"sbatch failed: {submit.stderr}\njob output:\n{logs}"
    assert job_id.isdigit(), submit.stdout

    lines = set(ranks_file.read_text().splitlines())
    assert lines == {"rank 0 size 2", "rank 1 size 2"}, f"ranks file: {lines}\njob output:\n{logs}"
    assert _sacct_state(job_id) == "COMPLETED"


# --- two nodes (scripts/local_slurm.sh start --nodes 2) --------------------------------------

ACROSS_NODES = (
    "import socket; from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "total = c.allreduce(c.Get_rank() + 1); hosts = c.allgather(socket.gethostname()); "
    "print(c.Get_rank(), c.Get_size(), total, ','.join(hosts), flush=True)"
)


@pytest.mark.multinode
def test_two_nodes_each_task_on_its_own_host(two_nodes: list[str]) -> None:
    out = _run("srun", "-N", "2", "--ntasks-per-node=1", "hostname", timeout=30)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == two_nodes[:2]


@pytest.mark.multinode
def test_two_nodes_mpi_ranks_talk_across_hosts(two_nodes: list[str]) -> None:
    """PMIx wires up one MPI job over both nodes; an allreduce and an allgather cross the
    bridge between the nodes' network namespaces."""
    out = _run(
        "srun",
        "-N",
        "2",
        "--ntasks-per-node=1",
        "--mpi=pmix",
        sys.executable,
        "-c",
        ACROSS_NODES,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = sorted(line.split() for line in out.stdout.splitlines())
    assert [r[:3] for r in rows] == [["0", "2", "3"], ["1", "2", "3"]], out.stdout
    hosts = rows[0][3].split(",")
    assert hosts == rows[1][3].split(",") and len(set(hosts)) == 2, out.stdout


@pytest.mark.multinode
def test_two_nodes_schedule_gpus_per_node(two_nodes: list[str]) -> None:
    """Each test node advertises one GPU (a GRES with no CUDA behind it): a job of
    --gpus-per-node=1 runs on both nodes, one of 2 is refused."""
    out = _run(
        "srun", "-N", "2", "--gpus-per-node=1", "--ntasks-per-node=1", "hostname", timeout=30
    )
    assert out.returncode == 0 and sorted(out.stdout.split()) == two_nodes[:2], out.stderr
    refused = _run("srun", "-N", "2", "--gpus-per-node=2", "--immediate=5", "true", timeout=30)
    assert refused.returncode != 0
    assert "Requested node configuration is not available" in refused.stderr, refused.stderr
