"""Two real hosts: generation, training and evaluation across the nodes of a 2-node SLURM.

The cluster is `scripts/local_slurm.sh start --nodes 2` (CI starts it): node1 and node2 are
network namespaces with their own hostnames, addresses and slurmd, joined by a bridge; the
file system is shared, as on a cluster. Each test skips, saying why, on a smaller cluster.
"""

import csv
import json
import re
import subprocess
from pathlib import Path

import h5py
import pytest
import submitit
import torch

from hpc_bliss.io.shards import DATASET_NAMES, read_attrs
from tests.slurm_utils import JOB_VENV, job_fields, plain_env, until
from tests.slurm_utils import run as _run
from tests.slurm_utils import sacct_state as _sacct_state
from tests.slurm_utils import wait_for_job as _wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
VENV = JOB_VENV
SMOKE = "configs/smoke.yaml"
#: 8 shards of 8 images: 4 train, 2 val, 2 test (so each of 2 evaluation ranks scores one)
DATA = ["generate.n_shards=8", "generate.split=[0.5,0.25,0.25]"]
#: what says who wrote a shard and how long it took, not what it holds
PROVENANCE = {"rank", "host", "created_utc", "seconds", "sample_s", "render_s", "write_s"}


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
        env=plain_env(HPC_BLISS_VENV=str(VENV), HPC_BLISS_CONFIG=SMOKE),
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
        env=plain_env(HPC_BLISS_VENV=str(VENV)),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def _without(manifest: dict, keys: set[str]) -> dict:
    shards = [{k: v for k, v in s.items() if k not in keys} for s in manifest["shards"]]
    return dict(manifest, shards=shards, ranks=None)


@pytest.fixture(scope="module")
def generated(two_nodes: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The data set written by 1 process, moved aside, then by `sbatch --nodes=2
    --ntasks-per-node=1 jobs/generate.sh` to the same path (the path is part of the config that
    every file records)."""
    root = tmp_path_factory.mktemp("multinode")
    data, reference = root / "data", root / "reference"
    one = _cli("generate", SMOKE, *DATA, f"generate.output_dir={data}")
    assert one.returncode == 0, one.stdout + one.stderr
    data.rename(reference)
    job_id = _sbatch(root, "generate.sh", *DATA, f"generate.output_dir={data}")
    log = (root / f"generate.sh-{job_id}.out").read_text()
    return {"root": root, "data": data, "reference": reference, "one": one.stdout, "log": log}


def test_generate_on_two_nodes_equals_one_process(generated: dict) -> None:
    """Rank 0 on node1, rank 1 on node2; one manifest and one dataset.h5 over every shard; the
    data are the bytes one process writes, and dataset.h5 is the same file."""
    data, reference, log = generated["data"], generated["reference"], generated["log"]
    assert "by 1 rank on 1 host" in generated["one"], generated["one"]
    assert "by 2 ranks on 2 hosts (node1, node2)" in log, log
    assert "[generate rank 1/2 node2 cpu]" in log and "[generate rank 0/2 node1 cpu]" in log, log

    manifest = json.loads((data / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    assert manifest["ranks"] == 2 and expected["ranks"] == 1
    assert manifest["missing"] == [] and manifest["failures"] == []
    assert [s["id"] for s in manifest["shards"]] == list(range(8))
    assert {(s["rank"], s["host"]) for s in manifest["shards"]} == {(0, "node1"), (1, "node2")}
    assert _without(manifest, PROVENANCE) == _without(expected, PROVENANCE)

    assert (data / "dataset.h5").read_bytes() == (reference / "dataset.h5").read_bytes()
    with h5py.File(data / "dataset.h5") as f:
        assert sum(f[split]["images"].shape[0] for split in f) == 8 * 8
    for entry in manifest["shards"]:
        attrs = read_attrs(data / entry["file"])
        ref_attrs = read_attrs(reference / entry["file"])
        assert (attrs["host"], attrs["rank"]) == (entry["host"], entry["rank"])
        assert {k for k in attrs if attrs[k] != ref_attrs[k]} <= PROVENANCE
        with h5py.File(data / entry["file"]) as f, h5py.File(reference / entry["file"]) as g:
            for name in DATASET_NAMES:
                assert f[name][()].tobytes() == g[name][()].tobytes(), (entry["file"], name)


# --- training: `hpc-bliss submit train --nodes 2 --gpus-per-node 1` ---------------------------


def _train_overrides(data: Path, out: Path) -> list[str]:
    """One process per node (train.devices=1, num_nodes=2); accelerator=auto finds no CUDA
    behind the test cluster's GPU and trains on the CPU, so DDP runs over gloo."""
    return [
        f"train.data_dir={data}",
        f"train.output_dir={out}",
        "train.devices=1",
        "train.num_nodes=2",
        "train.batch_size=4",
        "train.max_epochs=8",
        "train.learning_rate=3e-3",
        "train.num_workers=0",
        "train.record_items=true",
    ]


@pytest.fixture(scope="module")
def trained(generated: dict) -> dict:
    """The submitted job, preempted once (USR2, as SLURM does before a time limit), requeued
    by submitit, resumed from last.ckpt on both nodes, run to its end."""
    root, data = generated["root"], generated["data"]
    out, folder = root / "train", root / "submitit"
    shape = ["--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"]
    sub = _cli(
        "submit", "train", SMOKE, *_train_overrides(data, out), *shape,
        "--cluster=slurm", "--folder", str(folder),
    )  # fmt: skip
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = re.search(r"\[submit\] job (\d+) ", sub.stdout).group(1)
    job = submitit.SlurmJob(folder=folder, job_id=job_id, tasks=(0, 1))
    last = out / "checkpoints" / "last.ckpt"
    try:
        until("no last.ckpt", last.is_file, 120, folder)
        assert _run("scancel", "--signal=USR2", job_id).returncode == 0
        # requeued: restarted once, and through REQUEUED/COMPLETING to pending (or beyond)
        again = {"PENDING", "RUNNING", "COMPLETED"}

        def requeued() -> bool:
            fields = job_fields(job_id)
            return fields.get("Restarts") == "1" and fields.get("JobState") in again

        until("not requeued", requeued, 60, folder)
        preempted_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        # a requeued job may start again only ~2 min later (its BeginTime): skip the wait
        if job_fields(job_id).get("JobState") == "PENDING":
            _run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        until("not finished", lambda: job.done(force_check=True), 240, folder)
        results = job.results()
    except BaseException:
        # say where the job stood, and leave no job behind for the tests that follow
        fields = job_fields(job_id)
        history = _run("sacct", "-j", job_id, "-X", "-n", "--duplicates", "-o", "State,ExitCode")
        _run("scancel", job_id)
        print(f"job {job_id}: {fields.get('JobState')} {fields.get('Reason')}, restarts "
              f"{fields.get('Restarts')}; sacct: {' '.join(history.stdout.split())}")  # fmt: skip
        raise
    return {
        "job_id": job_id,
        "submitted": sub.stdout,
        "results": results,
        "preempted_at": preempted_at,
        "out": out,
        "folder": folder,
    }


def _val_losses(out: Path) -> list[float]:
    losses = []
    for path in sorted(out.glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            losses += [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    return losses


def test_train_on_two_nodes_submitit(two_nodes: list[str], trained: dict) -> None:
    job_id, out, folder = trained["job_id"], trained["out"], trained["folder"]
    assert "2 node(s) × 1 task(s), 1 GPU(s)/node" in trained["submitted"], trained["submitted"]
    # both ranks ran, each on its own host, in one world of 2, to the same final step
    results = trained["results"]
    assert [(r["rank"], r["world_size"]) for r in results] == [(0, 2), (1, 2)]
    assert {r["host"] for r in results} == {"node1", "node2"}
    steps_per_epoch = 32 // (4 * 2)  # 32 training images, batch 4 per process, 2 processes
    assert {r["global_step"] for r in results} == {8 * steps_per_epoch}
    logs = {rank: (folder / f"{job_id}_{rank}_log.out").read_text() for rank in (0, 1)}
    for rank, host in ((0, "node1"), (1, "node2")):
        assert f"[train rank {rank}/2 {host} cpu] backend gloo" in logs[rank], logs[rank][-2000:]

    # preempted once, requeued, resumed from last.ckpt, completed
    assert 1 <= trained["preempted_at"] < 8 * steps_per_epoch
    assert _sacct_state(job_id, timeout=60) == "COMPLETED"
    history = _run("sacct", "-j", job_id, "-X", "-n", "--duplicates", "-o", "State").stdout
    assert history.split() == ["REQUEUED", "COMPLETED"], history
    assert "Restoring states from the checkpoint" in (folder / f"{job_id}_0_log.err").read_text()

    # disjoint data: in every epoch, the two ranks read disjoint halves of the 32 images
    records = [json.loads((out / "items" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["host"], r["backend"]) for r in records] == [("node1", "gloo"), ("node2", "gloo")]
    epochs = records[0]["epochs"]
    assert epochs.keys() == records[1]["epochs"].keys() and {"0", "7"} <= epochs.keys()
    for epoch in epochs:
        a, b = ({tuple(item) for item in r["epochs"][epoch]} for r in records)
        assert len(a) == len(b) == 16 and not a & b and len(a | b) == 32, epoch

    # the loss fell; the checkpoints were written once, by rank 0, not once per node
    losses = _val_losses(out)
    assert len(losses) >= 8 and losses[-1] < 0.9 * losses[0], losses
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8 * (
        steps_per_epoch
    )


# --- evaluation -------------------------------------------------------------------------------


def test_evaluate_on_two_nodes_equals_one_process(generated: dict, trained: dict) -> None:
    root, data = generated["root"], generated["data"]
    ckpt = trained["out"] / "checkpoints" / "best.ckpt"
    common = [*DATA, f"evaluate.data_dir={data}", f"evaluate.checkpoint={ckpt}"]
    one = _cli("evaluate", SMOKE, *common, f"evaluate.output_dir={root / 'eval1'}")
    assert one.returncode == 0, one.stdout + one.stderr
    job_id = _sbatch(root, "evaluate.sh", *common, f"evaluate.output_dir={root / 'eval2'}")
    log = (root / f"evaluate.sh-{job_id}.out").read_text()
    assert "[evaluate rank 0/2 node1]" in log and "[evaluate rank 1/2 node2]" in log, log
    two = json.loads((root / "eval2" / "report.json").read_text())
    expected = json.loads((root / "eval1" / "report.json").read_text())
    assert two["processes"] == 2 and expected["processes"] == 1
    assert len(two["test_shards"]) == 2
    for key in ("encoder", "sep", "most_frequent", "n_tiles", "test_shards"):
        assert two[key] == expected[key], key


# --- refusals against this cluster ------------------------------------------------------------


def test_mismatched_shapes_refused_on_two_nodes(generated: dict, tmp_path: Path) -> None:
    """Nothing is queued when the Trainer's shape and the job's disagree, when more GPUs per
    node are asked than the nodes have (sinfo says 1), more nodes than the partition has (SLURM
    would queue it for ever), or a partition that does not exist (sbatch says no)."""
    data, folder = generated["data"], tmp_path / "submitit"
    queued_before = set(_run("squeue", "-h", "-o", "%i").stdout.split())
    base = [*_train_overrides(data, tmp_path / "train"), "--cluster=slurm", "--folder", str(folder)]
    cases = [
        (["train.num_nodes=1", "--nodes=2"], "train.num_nodes=1 but 2 node(s)"),
        (["--nodes=2", "--tasks-per-node=2"], "train.devices=1 but 2 task(s) per node"),
        (
            ["train.devices=2", "--nodes=2", "--gpus-per-node=2"],
            "2 GPU(s) per node requested, nodes of partition debug have 1",
        ),
        (["train.num_nodes=3", "--nodes=3"], "3 node(s) requested, partition debug has 2"),
        (["--nodes=2", "--partition=nosuch"], "submission to slurm failed"),
    ]
    for extra, message in cases:
        refused = _cli("submit", "train", SMOKE, *base, *extra)
        assert refused.returncode != 0, (extra, refused.stdout)
        assert message in refused.stderr, (extra, refused.stderr)
    assert set(_run("squeue", "-h", "-o", "%i").stdout.split()) <= queued_before
