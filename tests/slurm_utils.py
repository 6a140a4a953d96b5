"""Helpers shared by the tests that use the local SLURM cluster (scripts/local_slurm.sh)."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

START_HINT = (
    "run `scripts/run_tests.sh --cluster` (as root: installs and starts a two-node local SLURM, "
    "then runs everything), or `scripts/local_slurm.sh install && scripts/local_slurm.sh start "
    "--nodes 2`"
)
#: the virtual environment jobs activate (HPC_BLISS_VENV): the one running the tests, so that
#: `HPC_BLISS_VENV=... scripts/run_tests.sh --cluster` tests the venv it built (else .venv)
JOB_VENV = (
    Path(sys.prefix)
    if sys.prefix != sys.base_prefix
    else Path(__file__).resolve().parents[1] / ".venv"
)
NODES_HINT = "run `scripts/local_slurm.sh start --nodes 2` (as root)"
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def run(*args: str, timeout: float = 20, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs
    )


#: variables that would make a plain process think an MPI launcher started it
MPI_PREFIXES = ("OMPI_", "PMIX_", "PMI_")


def plain_env(**extra: str) -> dict[str, str]:
    """This process's environment for a job or a plain reference process: without MPI launcher
    variables and the job scripts' site settings (HPC_BLISS_MODULES, HPC_BLISS_SRUN_MPI), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(MPI_PREFIXES)}
    for var in ("HPC_BLISS_MODULES", "HPC_BLISS_SRUN_MPI"):
        env.pop(var, None)
    return dict(env, **extra)


def require_slurm_cluster() -> None:
    """Skip the module unless a SLURM cluster answers with a usable node."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"sinfo is not on PATH: no SLURM here; {START_HINT}")
    try:
        # `scontrol ping` answers at once; sinfo retries for 9 s when slurmctld is down.
        ping = run("scontrol", "ping")
        if ping.returncode != 0:
            why = (ping.stdout + ping.stderr).strip().splitlines()[:1] or ["scontrol ping failed"]
            pytest.skip(f"slurmctld is not up ({why[0]}); {START_HINT}")
        info = run("sinfo", "-h", "-o", "%T")
    except subprocess.TimeoutExpired:
        pytest.skip(f"sinfo did not answer within 20 s: the cluster is not up; {START_HINT}")
    states = set(info.stdout.split())
    if info.returncode != 0 or not states & USABLE_NODE_STATES:
        detail = (info.stderr or info.stdout).strip().splitlines()[-1:] or ["no nodes"]
        pytest.skip(f"the SLURM cluster is not up ({detail[0]}); {START_HINT}")


def require_nodes(n: int) -> list[str]:
    """Skip unless the cluster has ``n`` or more usable nodes; return their names."""
    require_slurm_cluster()
    out = run("sinfo", "-h", "-N", "-o", "%N %T")
    nodes = sorted(
        {
            name
            for name, state in (line.split() for line in out.stdout.splitlines())
            if state in USABLE_NODE_STATES
        }
    )
    if len(nodes) < n:
        pytest.skip(f"the SLURM cluster has {len(nodes)} usable node(s), not {n}; {NODES_HINT}")
    return nodes


def sacct_state(job_id: str, timeout: float = 20) -> str:
    """The job's State in accounting, waiting for slurmdbd to record its end."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        out = run("sacct", "-j", job_id, "-n", "-X", "-o", "State")
        state = out.stdout.strip().split()[0] if out.stdout.strip() else ""
        if state in TERMINAL_STATES:
            return state
        time.sleep(0.5)
    return state


def job_fields(job_id: str) -> dict[str, str]:
    """The job's fields in slurmctld (JobState, Restarts, NodeList, ...)."""
    out = run("scontrol", "show", "job", "-o", job_id)
    return dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)


def until(what: str, check: Callable[[], bool], timeout: float, logs: Path) -> None:
    """Poll ``check`` every 0.3 s; fail with "``what`` within ``timeout`` s" and the tails of
    the submitit logs in ``logs`` when it does not come true in time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            text = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*_log.*")))
            pytest.fail(f"{what} within {timeout} s; logs:\n{text}")
        time.sleep(0.3)


def wait_for_job(job_id: str, timeout: float) -> dict[str, str]:
    """The job's fields in slurmctld (JobState, ExitCode, ...) once it has ended.

    Polled every 0.5 s rather than with `sbatch --wait`, which checks after 2, 10, 42, 74 s:
    a job that takes 11 s would keep the test waiting 42 s.
    """
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") in TERMINAL_STATES:
            return fields
        time.sleep(0.5)
    run("scancel", job_id)
    pytest.fail(f"job {job_id} did not end within {timeout} s: {fields.get('JobState')}")
