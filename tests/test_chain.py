"""`submit_pipeline` (hpc_bliss/launch/chain.py) and jobs/evaluate.sh: generate → train →
evaluate queued at once on the local SLURM cluster, each job held until the one before it
COMPLETED.

The SLURM test needs a cluster that is already up (CI starts it with
`scripts/local_slurm.sh start`); it skips only when `scontrol ping` fails.
"""

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from hpc_bliss.config import load_config
from hpc_bliss.errors import LaunchError
from hpc_bliss.launch.chain import job_config, log_path, sbatch_command, submit_pipeline
from hpc_bliss.launch.shape import JobShape
from tests.slurm_utils import JOB_VENV, plain_env
from tests.slurm_utils import run as _run
from tests.slurm_utils import sacct_state as _sacct_state
from tests.slurm_utils import wait_for_job as _wait_for_job

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "evaluate.sh"
CONFIG = ROOT / "configs" / "smoke.yaml"


def test_evaluate_script_syntax_and_no_site_values() -> None:
    check = _run("bash", "-n", str(SCRIPT))
    assert check.returncode == 0, check.stderr
    header = [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    options = {line.split()[1].split("=")[0] for line in header}
    assert {"--job-name", "--nodes", "--ntasks-per-node", "--time", "--output"} <= options
    site = re.compile(r"\s(-p|--partition|-A|--account|-q|--qos|--reservation)\b")
    assert not [line for line in header if site.search(line)], header
    assert "#SBATCH --ntasks-per-node=2" in header
    assert "#SBATCH --job-name=hpc-bliss-evaluate" in header
    text = SCRIPT.read_text()
    assert 'srun --mpi="$srun_mpi"' in text and "hpc_bliss evaluate" in text
    assert 'source "$job_env"' in text


def test_pipeline_refuses_a_checkpoint_and_a_bad_shape(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, ["train.accelerator=cpu"])
    with pytest.raises(LaunchError, match="drop ckpt="):
        submit_pipeline(cfg, CONFIG, ["ckpt=x.ckpt"], JobShape(1, 2), log_dir=tmp_path)
    for unwiring in ("evaluate.checkpoint=x.ckpt", f"train.data_dir={tmp_path / 'elsewhere'}"):
        with pytest.raises(LaunchError, match=f"but {unwiring.split('=')[0]}=.*drop these"):
            submit_pipeline(cfg, CONFIG, [unwiring], JobShape(1, 2), log_dir=tmp_path)
    bad = load_config(CONFIG, ["train.devices=4"])  # disagrees with 2 tasks per node
    with pytest.raises(LaunchError, match="train.devices=4 but 2 task"):
        submit_pipeline(bad, CONFIG, ["train.devices=4"], JobShape(1, 2), log_dir=tmp_path)
    with pytest.raises(LaunchError, match="accelerator=cpu but 1 GPU"):
        submit_pipeline(cfg, CONFIG, [], JobShape(1, 1, 1), log_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was queued


def test_jobs_get_absolute_output_dirs_and_the_rest_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs get the three output directories, absolute, and nothing copied from one key
    to another: the config's interpolations point train and evaluate at generate's data and
    the evaluation at train's best.ckpt."""
    monkeypatch.chdir(tmp_path)  # relative paths are relative to where the command runs
    overrides = ["generate.output_dir=d", "train.max_epochs=1", "train.devices=2"]
    cfg = load_config(CONFIG, overrides)
    common, job = job_config(CONFIG, cfg, overrides)
    assert common == [
        *overrides[:2],  # not the Trainer's shape: train.sh sets it from the allocation
        f"generate.output_dir={tmp_path / 'd'}",
        f"train.output_dir={tmp_path / 'runs/smoke/train'}",
        f"evaluate.output_dir={tmp_path / 'runs/smoke/evaluate'}",
    ]
    assert job.train.data_dir == job.evaluate.data_dir == str(tmp_path / "d")
    assert job.evaluate.checkpoint == str(tmp_path / "runs/smoke/train/checkpoints/best.ckpt")
    assert job.train.max_epochs == 1
    sbatch = sbatch_command(tmp_path, tmp_path / "logs", JobShape(2, 1, 1, 3), "p", None, 9)
    assert sbatch[4:] == [
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=3",
        "--partition=p",
        "--time=9",
        "--gpus-per-node=1",
    ]
    assert "--cpus-per-task" not in " ".join(
        sbatch_command(tmp_path, tmp_path, JobShape(1, 2), None, None, None)
    )


def _sacct_times(job_id: str) -> tuple[datetime, datetime]:
    out = _run("sacct", "-j", job_id, "-n", "-X", "-P", "-o", "Start,End")
    start, end = out.stdout.strip().splitlines()[0].split("|")
    return datetime.fromisoformat(start), datetime.fromisoformat(end)


@pytest.mark.slurm
def test_pipeline_runs_in_order(
    slurm_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = plain_env(HPC_BLISS_VENV=str(JOB_VENV))
    overrides = [
        f"generate.output_dir={tmp_path / 'data'}",
        f"train.output_dir={tmp_path / 'train'}",
        f"evaluate.output_dir={tmp_path / 'evaluate'}",
        "train.max_epochs=1",
        "train.num_workers=0",
        "train.accelerator=cpu",
    ]
    cfg = load_config(CONFIG, overrides)
    logs = tmp_path / "logs"
    ids = submit_pipeline(cfg, CONFIG, overrides, JobShape(1, 2), log_dir=logs, environ=env)
    printed = capsys.readouterr().out
    assert list(ids) == ["generate", "train", "evaluate"], ids
    assert all(i.isdigit() for i in ids.values()) and len(set(ids.values())) == 3
    for stage, job_id in ids.items():
        assert f"job {job_id}" in printed and str(log_path(logs, stage, job_id)) in printed
    assert f"sacct -j {ids['generate']},{ids['train']},{ids['evaluate']}" in printed

    job = _wait_for_job(ids["evaluate"], timeout=150)
    text = {
        s: p.read_text() if p.is_file() else "" for s in ids for p in [log_path(logs, s, ids[s])]
    }
    alllogs = "\n".join(f"--- {s}:\n{t}" for s, t in text.items())
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), alllogs
    for job_id in ids.values():
        assert _sacct_state(job_id) == "COMPLETED", alllogs

    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert 0.0 <= report["encoder"]["n_sources_accuracy"] <= 1.0
    assert report["n_tiles"] > 0 and report["processes"] == 2
    assert 0.0 <= report["most_frequent"]["n_sources_accuracy"] <= 1.0
    assert report["checkpoint"] == str(tmp_path / "train" / "checkpoints" / "best.ckpt")
    assert (tmp_path / "data" / "manifest.json").is_file()

    # dependencies respected: each stage started once the one before it had ended
    gen_start, gen_end = _sacct_times(ids["generate"])
    train_start, train_end = _sacct_times(ids["train"])
    eval_start, _ = _sacct_times(ids["evaluate"])
    assert gen_end <= train_start and train_end <= eval_start, alllogs
    log_start = re.search(r"^start:\s+(\S+)", text["evaluate"], re.M)
    assert log_start, text["evaluate"]
    started = datetime.fromisoformat(log_start.group(1)).replace(tzinfo=None)
    assert started >= train_end, (started, train_end)
    assert f"afterok:{ids['train']}" in text["evaluate"], text["evaluate"]


def test_submit_pipeline_reads_submit_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from hpc_bliss.launch import chain
    from hpc_bliss.launch.submit import add_submit_parser

    seen: dict = {}
    monkeypatch.setattr(chain, "submit_pipeline", lambda *a, **k: seen.update(a=a, k=k) or {})
    parser = argparse.ArgumentParser()
    add_submit_parser(parser.add_subparsers())
    argv = ["submit", "pipeline", str(CONFIG), "train.max_epochs=1", "--tasks-per-node", "2"]
    args = parser.parse_args([*argv, "--partition", "p", "--time", "9", "--cpus-per-task", "3"])
    assert args.func(args) == 0
    assert seen["a"][1:] == (str(CONFIG), ["train.max_epochs=1"], JobShape(1, 2, 0, 3))
    assert seen["a"][0].train.max_epochs == 1
    assert seen["k"] == dict(partition="p", account=None, time_minutes=9)
    args = parser.parse_args([*argv, "--cluster", "local"])
    with pytest.raises(LaunchError, match="queues SLURM jobs; --cluster local"):
        args.func(args)


@pytest.mark.slurm
def test_pipeline_names_the_stage_sbatch_refused(slurm_cluster: None, tmp_path: Path) -> None:
    cfg = load_config(CONFIG, [])
    with pytest.raises(LaunchError, match=r"stage 'generate': sbatch failed[\s\S]*partition"):
        submit_pipeline(
            cfg, CONFIG, [], JobShape(1, 2), partition="no-such-partition", log_dir=tmp_path
        )
