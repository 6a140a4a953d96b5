"""Two real hosts: generation, training and evaluation across the nodes of a 2-node SLURM.

The cluster is `scripts/local_slurm.sh start --nodes 2` (CI starts it): node1 and node2 are
network namespaces with their own hostnames, addresses and slurmd, joined by a bridge; the
file system is shared, as on a cluster. Each test skips, saying why, on a smaller cluster.
"""

import json
import os
import subprocess
from pathlib import Path

import h5py
import pytest

from hpc_bliss.io.shards import DATASET_NAMES, read_attrs
from tests.slurm_utils import run as _run
from tests.slurm_utils import sacct_state as _sacct_state
from tests.slurm_utils import wait_for_job as _wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
SMOKE = "configs/smoke.yaml"
#: variables that would make a plain process think an MPI launcher started it
MPI_PREFIXES = ("OMPI_", "PMIX_", "PMI_")
#: what says who wrote a shard and how long it took, not what it holds
PROVENANCE = {"rank", "host", "created_utc", "seconds", "sample_s", "render_s", "write_s"}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(MPI_PREFIXES)}
    for var in ("HPC_BLISS_MODULES", "HPC_BLISS_SRUN_MPI"):
        env.pop(var, None)
    return dict(env, HPC_BLISS_VENV=str(VENV), **extra)


def _sbatch(tmp_path: Path, script: str, *args: str, options: tuple[str, ...] = ()) -> str:
    """Submit jobs/<script> on 2 nodes × 1 task; the job id once it COMPLETED."""
    submit = _run(
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--ntasks-per-node=1",
        f"--chdir={ROOT}",
        f"--output={tmp_path}/{script}-%j.out",
        *options,
        str(ROOT / "jobs" / script),
        *args,
        cwd=ROOT,
        env=_clean_env(HPC_BLISS_CONFIG=SMOKE),
    )
    assert submit.returncode == 0, f"sbatch: {submit.stderr}"
    job_id = submit.stdout.strip().split(";")[0]
    job = _wait_for_job(job_id, timeout=180)
    log = "\n".join(p.read_text() for p in tmp_path.glob(f"{script}-{job_id}.out"))
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), f"job output:\n{log}"
    assert job["NodeList"] == "node[1-2]", job
    assert _sacct_state(job_id) == "COMPLETED", log
    return job_id


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`hpc-bliss ARGS` as one plain process on this (the login) host."""
    return subprocess.run(
        [str(VENV / "bin" / "hpc-bliss"), *args],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def _without(manifest: dict, keys: set[str]) -> dict:
    shards = [{k: v for k, v in s.items() if k not in keys} for s in manifest["shards"]]
    return dict(manifest, shards=shards, ranks=None)


def test_generate_on_two_nodes_equals_one_process(two_nodes: list[str], tmp_path: Path) -> None:
    """`sbatch --nodes=2 --ntasks-per-node=1 jobs/generate.sh`: rank 0 on node1, rank 1 on node2,
    one manifest and one dataset.h5 over every shard; the data are the bytes one process writes.

    Both runs write to the same path (the reference is moved aside first), because the path is
    part of the config recorded in every file."""
    data = tmp_path / "data"
    one = _cli("generate", SMOKE, f"generate.output_dir={data}")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "by 1 rank on 1 host" in one.stdout, one.stdout
    reference = tmp_path / "reference"
    data.rename(reference)

    job_id = _sbatch(tmp_path, "generate.sh", f"generate.output_dir={data}")
    log = (tmp_path / f"generate.sh-{job_id}.out").read_text()
    assert "by 2 ranks on 2 hosts (node1, node2)" in log, log
    assert "[generate rank 1/2 node2 cpu]" in log and "[generate rank 0/2 node1 cpu]" in log, log

    manifest = json.loads((data / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    assert manifest["ranks"] == 2 and expected["ranks"] == 1
    assert manifest["missing"] == [] and manifest["failures"] == []
    assert [s["id"] for s in manifest["shards"]] == list(range(4))
    assert {(s["rank"], s["host"]) for s in manifest["shards"]} == {(0, "node1"), (1, "node2")}
    assert _without(manifest, PROVENANCE) == _without(expected, PROVENANCE)

    # one dataset.h5 over every shard: the same bytes as the reference's
    assert (data / "dataset.h5").read_bytes() == (reference / "dataset.h5").read_bytes()
    with h5py.File(data / "dataset.h5") as f:
        assert sum(f[split]["images"].shape[0] for split in f) == 4 * 8
    for entry in manifest["shards"]:
        attrs = read_attrs(data / entry["file"])
        ref_attrs = read_attrs(reference / entry["file"])
        assert (attrs["host"], attrs["rank"]) == (entry["host"], entry["rank"])
        assert {k for k in attrs if attrs[k] != ref_attrs[k]} <= PROVENANCE
        with h5py.File(data / entry["file"]) as f, h5py.File(reference / entry["file"]) as g:
            for name in DATASET_NAMES:
                assert f[name][()].tobytes() == g[name][()].tobytes(), (entry["file"], name)
