"""jobs/generate.sh: submitted with sbatch to the local SLURM cluster, its two MPI ranks write
the same shards as one process does, and as an array job its tasks write what one MPI job
writes; the script hard-codes no site values.

The SLURM test needs a cluster that is already up (CI starts it with
`scripts/local_slurm.sh start`); it skips only when `scontrol ping` fails.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from hpc_bliss.config import load_config
from hpc_bliss.io.schema import DATASET_NAMES
from hpc_bliss.io.shards import read_attrs, validate_shard
from tests.mpi_utils import MPI_ENV, mpirun
from tests.slurm_utils import JOB_VENV, TERMINAL_STATES, plain_env
from tests.slurm_utils import run as _run
from tests.slurm_utils import sacct_state as _sacct_state
from tests.slurm_utils import wait_for_job as _wait_for_job

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "generate.sh"
VENV = JOB_VENV  # the venv that runs pytest (its jobs use the same)


def _hashes(manifest: dict) -> dict[int, str]:
    return {s["id"]: s["content_sha256"] for s in manifest["shards"]}


def _sbatch_header() -> list[str]:
    return [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]


def test_script_syntax_and_no_site_values() -> None:
    check = _run("bash", "-n", str(SCRIPT))
    assert check.returncode == 0, check.stderr
    header = _sbatch_header()
    options = {line.split()[1].split("=")[0] for line in header}
    assert {"--job-name", "--nodes", "--ntasks-per-node", "--time", "--output"} <= options
    site = re.compile(r"\s(-p|--partition|-A|--account|-q|--qos|--reservation)\b")
    assert not [line for line in header if site.search(line)], header
    assert "#SBATCH --nodes=1" in header and "#SBATCH --ntasks-per-node=2" in header
    assert "##SBATCH --gpus-per-task=1" in SCRIPT.read_text()  # GPUs: documented, off


def test_site_example_loads() -> None:
    cfg = load_config(ROOT / "configs" / "site" / "example.yaml")
    assert cfg.launch.cluster == "slurm"
    assert cfg.launch.partition == "" and cfg.launch.account == ""


@pytest.mark.slurm
def test_sbatch_generate_matches_one_process(slurm_cluster: None, tmp_path: Path) -> None:
    env = plain_env()
    # the reference: one plain process, run while the job is queued and running
    one = subprocess.Popen(
        [str(VENV / "bin" / "hpc-bliss"), "generate", "configs/smoke.yaml"]
        + [f"generate.output_dir={tmp_path / 'one'}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    job_env = dict(env, HPC_BLISS_CONFIG="configs/smoke.yaml", HPC_BLISS_VENV=str(VENV))
    data = tmp_path / "data"
    submit = _run(
        "sbatch",
        "--parsable",
        f"--chdir={ROOT}",
        f"--output={tmp_path}/gen-%j.out",
        str(SCRIPT),
        f"generate.output_dir={data}",
        cwd=ROOT,
        env=job_env,
    )
    assert submit.returncode == 0, f"sbatch: {submit.stderr}"
    job_id = submit.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submit.stdout
    job = _wait_for_job(job_id, timeout=75)
    one_out, _ = one.communicate(timeout=60)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("gen-*.out"))
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), f"job output:\n{logs}"
    assert f"job {job_id}" in logs and "config:    configs/smoke.yaml" in logs, logs
    assert _sacct_state(job_id) == "COMPLETED", logs

    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["missing"] == [] and manifest["failures"] == [], logs
    assert manifest["ranks"] == 2
    assert sorted(_hashes(manifest)) == [0, 1, 2, 3]
    assert {s["rank"] for s in manifest["shards"]} == {0, 1}
    for entry in manifest["shards"]:
        path = data / entry["file"]
        assert validate_shard(path, manifest["config_hash"]) == [], path
        attrs = read_attrs(path)
        assert attrs["rank"] == entry["rank"]  # a rank that finishes first helps the other
        assert attrs["content_sha256"] == entry["content_sha256"]
    assert (data / "dataset.h5").is_file()

    assert one.returncode == 0, one_out
    reference = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert reference["ranks"] == 1 and reference["config_hash"] == manifest["config_hash"]
    assert _hashes(manifest) == _hashes(reference)


def _array_states(job_id: str, tasks: int, timeout: float) -> list[str]:
    """The accounting State of each task of array job ``job_id`` once all have ended."""
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        out = _run("sacct", "-j", job_id, "-n", "-X", "-o", "State")
        states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
        if len(states) == tasks and all(s in TERMINAL_STATES for s in states):
            return states
        time.sleep(0.5)
    _run("scancel", job_id)
    pytest.fail(f"array job {job_id} did not end within {timeout} s: {states}")


def _datasets(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()].tobytes() for name in DATASET_NAMES}


@pytest.mark.slurm
@pytest.mark.mpi
def test_array_job_writes_what_one_mpi_job_writes(slurm_cluster: None, tmp_path: Path) -> None:
    data, n = tmp_path / "data", 8
    overrides = [f"generate.output_dir={data}", f"generate.n_shards={n}"]
    # the reference: one 2-rank MPI job in the same directory (the same resolved config), moved
    cmd = [*mpirun(2), str(VENV / "bin" / "python"), "-m", "hpc_bliss", "generate"]
    ref = subprocess.run(
        [*cmd, "configs/smoke.yaml", *overrides],
        cwd=ROOT,
        env=MPI_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stdout + ref.stderr
    data.rename(tmp_path / "mpi")

    job_env = dict(plain_env(), HPC_BLISS_CONFIG="configs/smoke.yaml", HPC_BLISS_VENV=str(VENV))
    submit = _run(
        "sbatch",
        "--parsable",
        "--array=0-3",
        "--ntasks-per-node=1",
        f"--chdir={ROOT}",
        f"--output={tmp_path}/array-%A_%a.out",
        str(SCRIPT),
        *overrides,
        cwd=ROOT,
        env=job_env,
    )
    assert submit.returncode == 0, f"sbatch: {submit.stderr}"
    job_id = submit.stdout.strip().split(";")[0]
    states = _array_states(job_id, 4, timeout=240)
    logs = {p.name: p.read_text() for p in sorted(tmp_path.glob("array-*.out"))}
    text = "\n".join(logs.values())
    assert states == ["COMPLETED"] * 4, text
    assert len(logs) == 4 and all("array task" in log for log in logs.values()), text
    made = [int(line.split("shard ")[1][:6]) for line in text.splitlines() if " images in " in line]
    assert sorted(made) == list(range(n)), text  # every shard written once, by one task

    manifest = json.loads((data / "manifest.json").read_text())
    reference = json.loads((tmp_path / "mpi" / "manifest.json").read_text())
    assert manifest["missing"] == [] and _hashes(manifest) == _hashes(reference)
    for sid in range(n):
        name = f"shards/shard-{sid:06d}.h5"
        assert _datasets(data / name) == _datasets(tmp_path / "mpi" / name), name
    assert (data / "dataset.h5").read_bytes() == (tmp_path / "mpi" / "dataset.h5").read_bytes()
