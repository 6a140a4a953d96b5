"""`hpc-bliss submit train` (hpc_bliss.launch: submit, shape, site, train_job) and jobs/train.sh.

Mismatched job shapes are refused before anything is submitted; the job pickles as plain text;
it runs in-process (`--cluster debug`), as 2 local DDP processes (`--cluster local`) and on the
local SLURM cluster (2 tasks, gloo DDP), where a preempted job is requeued and resumes from
last.ckpt. The SLURM test needs a cluster that is already up (`scripts/local_slurm.sh start`).
"""

import argparse
import csv
import pickle
import re
import shutil
from pathlib import Path

import pytest
from submitit.helpers import DelayedSubmission

from hpc_bliss.config import LaunchConfig, load_config, to_yaml
from hpc_bliss.errors import ConfigError, LaunchError
from hpc_bliss.launch.shape import JobShape
from hpc_bliss.launch.site import CLUSTERS, Partition, check_launch, gres_gpus
from hpc_bliss.launch.submit import KINDS, add_submit_parser
from hpc_bliss.launch.train_job import (
    TrainJob,
    config_from_yaml,
    local_ddp_env,
    submit_train,
    with_absolute_paths,
)
from tests.slurm_utils import job_fields, until
from tests.slurm_utils import run as _run
from tests.slurm_utils import sacct_state as _sacct_state

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
SCRIPT = ROOT / "jobs" / "train.sh"


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpc_bliss.stages.generate import generate

    out = tmp_path_factory.mktemp("submit") / "data"
    assert generate(load_config(SMOKE, [f"generate.output_dir={out}"])) == 0
    return out


def _overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"train.data_dir={data}", f"train.output_dir={out}", "train.accelerator=cpu", *extra]


def _cli(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="hpc-bliss")
    add_submit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


# --- refusals and plumbing (no jobs) ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, shape, named",
    [
        (["train.devices=2"], (1, 1, 0), ["train.devices=2", "1 task(s) per node"]),
        (["train.num_nodes=1"], (2, 1, 0), ["train.num_nodes=1", "2 node(s)"]),
        (
            ["train.devices=2", "train.accelerator=cpu"],
            (1, 2, 2),
            ["train.accelerator=cpu", "2 GPU(s) per node"],
        ),
        (["train.devices=2", "train.accelerator=gpu"], (1, 2, 4), ["train.devices=2", "4 GPU(s)"]),
        (["train.accelerator=gpu"], (1, 1, 0), ["train.accelerator=gpu", "0 GPUs"]),
    ],
)
def test_mismatch_refused(overrides: list[str], shape: tuple[int, int, int], named: list[str]):
    cfg = load_config(SMOKE, overrides)
    with pytest.raises(LaunchError) as err:
        check_launch(cfg, JobShape(*shape))
    message = str(err.value)
    assert all(value in message for value in named), message
    assert "most common cause of DDP hangs on SLURM" in message


def test_node_gpus_and_matching_shapes() -> None:
    gpu = load_config(SMOKE, ["train.devices=4", "train.num_nodes=2", "train.accelerator=gpu"])
    shape = JobShape(nodes=2, tasks_per_node=4, gpus_per_node=4)
    check_launch(gpu, shape, Partition("gpu", nodes=2, gpus_per_node=8))
    with pytest.raises(
        LaunchError, match="4 GPU\\(s\\) per node requested, nodes of partition gpu have 2"
    ):
        check_launch(gpu, shape, Partition("gpu", nodes=2, gpus_per_node=2))
    with pytest.raises(LaunchError, match="2 node\\(s\\) requested, partition gpu has 1"):
        check_launch(gpu, shape, Partition("gpu", nodes=1, gpus_per_node=8))
    check_launch(load_config(SMOKE, ["train.devices=2", "train.accelerator=cpu"]), JobShape(1, 2))
    assert [gres_gpus(g) for g in ("gpu:4", "gpu:a100:2(S:0-1)", "(null)", "gpu:1,gpu:t4:2")] == [
        4,
        2,
        0,
        3,
    ]


def test_refused_before_submission(smoke_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "submitit"
    common = ["--folder", folder, "--nodes", "1", "--gpus-per-node", "0"]
    overrides = _overrides(smoke_data, tmp_path / "t", "train.devices=2")
    with pytest.raises(LaunchError, match="train.devices=2 but 1 task"):
        _cli("submit", "train", SMOKE, *overrides, "--cluster", "slurm", *common)
    with pytest.raises(ConfigError, match="launch.cluster"):  # the config's type says no
        _cli("submit", "train", SMOKE, *overrides, "launch.cluster=cloud", *common)
    with pytest.raises(LaunchError, match="debug runs one process"):
        _cli("submit", "train", SMOKE, *overrides, "--tasks-per-node=2", "--cluster=debug", *common)
    assert not folder.exists()


def test_kinds_and_clusters_offered(capsys) -> None:
    """Only the kinds that work are offered; the clusters are the config's choices."""
    assert KINDS == ("train", "pipeline", "predict")
    assert CLUSTERS == ("local", "slurm", "debug")
    for argv in (
        ["evaluate", "c.yaml"],
        ["generate", "c.yaml"],
        ["train", "c.yaml", "--cluster=x"],
    ):
        with pytest.raises(SystemExit):  # argparse's usage error, naming the choices
            _cli("submit", *argv)
        assert "invalid choice" in capsys.readouterr().err


def test_shape_from_flags_and_config() -> None:
    """One derivation for every kind: flags win, else launch.*; tasks per node follow the GPUs
    per node (one task per GPU) unless given; CPUs per task default to the job's own."""
    launch = LaunchConfig(nodes=3, tasks_per_node=2, gpus_per_node=0)
    assert JobShape.derive(launch) == JobShape(3, 2, 0, None)
    assert JobShape.derive(launch, gpus_per_node=4) == JobShape(3, 4, 4, None)
    assert JobShape.derive(launch, 1, 8, 4, 5) == JobShape(1, 8, 4, 5)
    gpu = LaunchConfig(nodes=2, tasks_per_node=1, gpus_per_node=4)
    assert JobShape.derive(gpu) == JobShape(2, 4, 4)
    assert JobShape.derive(gpu, gpus_per_node=0).tasks == 2  # CPU tasks: launch.tasks_per_node
    assert JobShape(1, 2).with_cpus(3) == JobShape(1, 2, 0, 3)
    assert JobShape(1, 2, 0, 7).with_cpus(3).cpus_per_task == 7
    assert JobShape(2, 4, 4, 5).describe() == "2 node(s) × 4 task(s), 4 GPU(s)/node, 5 CPU(s)/task"


def test_job_pickles_as_text_and_checkpoints_itself() -> None:
    cfg = with_absolute_paths(load_config(SMOKE, ["train.output_dir=rel/out"]))
    assert Path(cfg.train.output_dir).is_absolute() and cfg.train.output_dir.endswith("rel/out")
    job = TrainJob(to_yaml(cfg))
    assert config_from_yaml(job.config_yaml) == cfg
    blob = pickle.dumps(job)
    assert b"omegaconf" not in blob and b"torch" not in blob
    assert pickle.loads(blob).config_yaml == job.config_yaml
    again = job.checkpoint()
    assert isinstance(again, DelayedSubmission)
    assert again.function is job and again.args == () and again.kwargs == {}


def test_local_ddp_env() -> None:
    task = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    }
    env = local_ddp_env(task)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("1", "1", "2")
    assert (
        env["MASTER_PORT"] == local_ddp_env(dict(task, SUBMITIT_LOCAL_GLOBALID="0"))["MASTER_PORT"]
    )
    assert local_ddp_env(dict(task, SUBMITIT_LOCAL_NTASKS="1")) == {}
    assert local_ddp_env({"SLURM_PROCID": "0"}) == {}


# --- jobs that run here ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_debug_cluster_trains_in_process(smoke_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "train"
    overrides = _overrides(smoke_data, out, "train.max_epochs=1")
    shape = ["--nodes", "1", "--tasks-per-node", "1", "--gpus-per-node", "0"]
    assert _cli("submit", "train", SMOKE, *overrides, "--cluster", "debug", *shape) == 0
    printed = capsys.readouterr().out
    assert "COMPLETED: step 2" in printed, printed
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # a job that fails inside is reported as failed (exit status 1), not raised
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(smoke_data / "manifest.json", broken / "manifest.json")
    overrides = _overrides(broken, tmp_path / "t2")
    assert _cli("submit", "train", SMOKE, *overrides, "--cluster", "debug", *shape) == 1
    assert "FAILED" in capsys.readouterr().err


def test_local_cluster_two_ddp_processes(smoke_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "train"
    overrides = _overrides(smoke_data, out, "train.devices=2", "train.max_epochs=1")
    shape = ["--nodes", "1", "--tasks-per-node", "2", "--gpus-per-node", "0"]
    assert _cli("submit", "train", SMOKE, *overrides, "--cluster", "local", "--wait", *shape) == 0
    printed = capsys.readouterr().out
    assert "COMPLETED: step 1" in printed, printed  # 16 images / (8 per step × 2 processes)
    logs = "".join(p.read_text() for p in (out / "submitit").glob("*/*_log.err"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs, logs


# --- the local SLURM cluster -----------------------------------------------------------------


def _steps(metrics_csv: Path) -> list[int]:
    with metrics_csv.open() as f:
        return sorted({int(row["step"]) for row in csv.DictReader(f)})


@pytest.mark.slurm
def test_slurm_preempted_job_resumes_then_resubmission_continues(
    slurm_cluster: None, smoke_data: Path, tmp_path: Path, capsys
) -> None:
    import torch

    out, folder = tmp_path / "train", tmp_path / "sub1"
    extra = ("train.devices=2", "train.max_epochs=100", "train.max_steps=6", "launch.cluster=slurm")
    cfg = load_config(SMOKE, _overrides(smoke_data, out, *extra))
    job = submit_train(cfg, JobShape(1, 2, 0, cpus_per_task=1), time_minutes=5, folder=folder)
    last = out / "checkpoints" / "last.ckpt"
    until("no last.ckpt", last.is_file, 90, folder)
    # what SLURM does before a time limit or a preemption: USR2 to every task; submitit calls
    # TrainJob.checkpoint() on rank 0 and requeues the job
    assert _run("scancel", "--signal=USR2", job.job_id).returncode == 0
    requeued = {"JobState": "PENDING", "Restarts": "1", "Reason": "BeginTime"}
    until("not requeued", lambda: requeued.items() <= job_fields(job.job_id).items(), 30, folder)
    preempted_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= preempted_at < 6
    # a requeued job may start again only ~2 min later (its BeginTime): skip the wait
    assert _run("scontrol", "update", f"JobId={job.job_id}", "StartTime=now").returncode == 0
    until("not finished", lambda: job.done(force_check=True), 120, folder)
    result = job.results()[0]
    assert result["global_step"] == 6 and result["rank"] == 0
    assert Path(result["last"]) == last and last.is_file()
    assert _sacct_state(job.job_id) == "COMPLETED"
    history = _run("sacct", "-j", job.job_id, "-X", "-n", "--duplicates", "-o", "State").stdout
    assert history.split() == ["REQUEUED", "COMPLETED"], history
    assert (
        "Restoring states from the checkpoint" in (folder / f"{job.job_id}_0_log.err").read_text()
    )
    assert _steps(out / "logs" / "version_1" / "metrics.csv")[0] >= preempted_at

    # a second submission with the same output_dir continues from step 6
    capsys.readouterr()
    overrides = _overrides(smoke_data, out, "train.devices=2", "train.max_epochs=100")
    shape = ["--nodes=1", "--tasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
    folder2 = tmp_path / "sub2"
    argv = [*overrides, "train.max_steps=8", "--cluster=slurm", "--time=5", "--folder", folder2]
    assert _cli("submit", "train", SMOKE, *argv, *shape, "--wait") == 0
    printed = capsys.readouterr().out
    job_id = re.search(r"\[submit\] job (\d+) ", printed).group(1)
    assert f"job {job_id} COMPLETED: step 8" in printed, printed
    assert f"squeue -j {job_id}" in printed and f"{job_id}_0_log.out" in printed
    assert _sacct_state(job_id) == "COMPLETED"
    assert _steps(out / "logs" / "version_2" / "metrics.csv")[0] >= 6
    recorded = (folder2 / f"{job_id}_config.yaml").read_text()
    assert f"output_dir: {out}" in recorded


@pytest.mark.slurm
def test_slurm_failed_job_reported(
    slurm_cluster: None, smoke_data: Path, tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "broken"  # a manifest whose shards are missing: train() raises
    broken.mkdir()
    shutil.copy(smoke_data / "manifest.json", broken / "manifest.json")
    overrides = _overrides(broken, tmp_path / "train")
    shape = ["--nodes=1", "--tasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]
    argv = [*overrides, "--cluster=slurm", "--time=5", "--folder", tmp_path / "sub", "--wait"]
    assert _cli("submit", "train", SMOKE, *argv, *shape) == 1
    printed = capsys.readouterr()
    job_id = re.search(r"\[submit\] job (\d+) ", printed.out).group(1)
    assert f"job {job_id} FAILED; log: {tmp_path / 'sub'}/{job_id}_0_log.out" in printed.err
    assert "shard file listed in" in printed.err
    assert _sacct_state(job_id) == "FAILED"


# --- jobs/train.sh ---------------------------------------------------------------------------


def test_train_script_syntax_shape_and_no_site_values(tmp_path: Path) -> None:
    check = _run("bash", "-n", str(SCRIPT))
    assert check.returncode == 0, check.stderr
    text = SCRIPT.read_text()
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    site = re.compile(r"\s(-p|--partition|-A|--account|-q|--qos|--reservation)\b")
    assert not [line for line in header if site.search(line)], header
    assert "#SBATCH --nodes=1" in header and "#SBATCH --ntasks-per-node=2" in header
    assert 'train.devices="$tasks_per_node" train.num_nodes="$num_nodes"' in text
    assert 'python -m hpc_bliss train "$config" "${shape[@]}" "$@"' in text
    # the Trainer's shape comes from the allocation only: overrides of it are refused
    env = {"PATH": "/usr/bin:/bin", "HPC_BLISS_CONFIG": str(SMOKE)}
    refused = _run("bash", str(SCRIPT), "train.devices=3", env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "--ntasks-per-node" in refused.stderr
    uneven = _run("bash", str(SCRIPT), env=dict(env, SLURM_TASKS_PER_NODE="3,2"), cwd=tmp_path)
    assert uneven.returncode == 2 and "uneven tasks per node" in uneven.stderr
