"""The local SLURM cluster of scripts/local_slurm.sh: batch jobs, MPI ranks through PMIx, sacct.

These tests use a cluster that is already up (CI starts it with
`scripts/local_slurm.sh install && scripts/local_slurm.sh start`); they skip only when there is
none.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

START_HINT = "run `scripts/local_slurm.sh install && scripts/local_slurm.sh start` (as root)"
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}

MPI_PROGRAM = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "print(f'rank {c.Get_rank()} size {c.Get_size()}', flush=True)"
)


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip the module unless a SLURM cluster answers with a usable node."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"sinfo is not on PATH: no SLURM here; {START_HINT}")
    try:
        # `scontrol ping` answers at once; sinfo retries for 9 s when slurmctld is down.
        ping = _run("scontrol", "ping")
        if ping.returncode != 0:
            why = (ping.stdout + ping.stderr).strip().splitlines()[:1] or ["scontrol ping failed"]
            pytest.skip(f"slurmctld is not up ({why[0]}); {START_HINT}")
        info = _run("sinfo", "-h", "-o", "%T")
    except subprocess.TimeoutExpired:
        pytest.skip(f"sinfo did not answer within 20 s: the cluster is not up; {START_HINT}")
    states = set(info.stdout.split())
    if info.returncode != 0 or not states & USABLE_NODE_STATES:
        detail = (info.stderr or info.stdout).strip().splitlines()[-1:] or ["no nodes"]
        pytest.skip(f"the SLURM cluster is not up ({detail[0]}); {START_HINT}")


def _sacct_state(job_id: str, timeout: float = 20) -> str:
    """The job's State in accounting, waiting for slurmdbd to record its end."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        out = _run("sacct", "-j", job_id, "-n", "-X", "-o", "State")
        state = out.stdout.strip().split()[0] if out.stdout.strip() else ""
        if state in TERMINAL_STATES:
            return state
        time.sleep(0.5)
    return state


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
