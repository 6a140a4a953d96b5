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
