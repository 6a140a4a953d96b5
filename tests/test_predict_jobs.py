"""`hpc-bliss submit predict` and jobs/predict.sh: the sbatch command it builds, and (on the
local SLURM cluster) a 2-rank job whose catalog equals one process's."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_bliss.cli import main
from hpc_bliss.config import load_config
from hpc_bliss.predict.catalog_io import COLUMNS, read_catalog
from hpc_bliss.stages.generate import generate
from hpc_bliss.stages.predict import predict
from hpc_bliss.stages.train import train
from tests.conftest import CONFIGS, ROOT
from tests.slurm_utils import JOB_VENV, plain_env, wait_for_job

CUT = ROOT / "tests" / "data" / "sdss-cut" / "2583" / "2" / "136"


def test_submit_predict_queues_the_job_script(monkeypatch, tmp_path, capsys):
    """The job gets jobs/predict.sh, the allocation's shape and absolute paths (ckpt= spelled
    out), whatever the directory it was submitted from."""
    sent = {}

    def fake_sbatch(what, cmd, env, cwd):
        sent.update(what=what, cmd=cmd, env=env, cwd=cwd)
        return "4242"

    monkeypatch.setattr("hpc_bliss.predict.submit.sbatch_job", fake_sbatch)
    monkeypatch.chdir(tmp_path)
    argv = [
        "submit",
        "predict",
        str(CONFIGS / "sdss_m2.yaml"),
        f"survey.field={CUT}",
        "ckpt=some/best.ckpt",
        "predict.fields=[a/136]",
        "--nodes",
        "2",
        "--tasks-per-node",
        "3",
        "--partition",
        "cpu",
    ]
    assert main(argv) == 0
    cmd = sent["cmd"]
    assert cmd[0] == "sbatch" and str(ROOT / "jobs" / "predict.sh") in cmd
    assert "--nodes=2" in cmd and "--ntasks-per-node=3" in cmd and "--partition=cpu" in cmd
    assert f"predict.checkpoint={tmp_path / 'some/best.ckpt'}" in cmd
    assert f"predict.fields=[{tmp_path / 'a/136'}]" in cmd
    assert sent["env"]["HPC_BLISS_CONFIG"] == str(CONFIGS / "sdss_m2.yaml")
    assert "[predict] job 4242" in capsys.readouterr().out


@pytest.mark.slurm
def test_sbatch_predict_matches_one_process(slurm_cluster: None, tmp_path: Path) -> None:
    overrides = [
        f"survey.field={CUT}",
        "prior.image_height=32",
        "prior.image_width=32",
        f"generate.output_dir={tmp_path / 'data'}",
        "generate.n_shards=4",
        "generate.images_per_shard=8",
        "generate.batch_size=8",
        "generate.split=[0.5,0.25,0.25]",
        f"train.output_dir={tmp_path / 'train'}",
        "train.max_epochs=1",
        "train.hidden=8",
        "train.n_blocks=1",
        "train.num_workers=0",
        "train.batch_size=8",
        f"predict.fields=[{CUT}]",
    ]
    cfg = load_config(CONFIGS / "sdss_m2.yaml", overrides)
    assert generate(cfg, log=lambda s: None) == 0
    overrides.append(f"ckpt={train(cfg)['best']}")
    one = load_config(
        CONFIGS / "sdss_m2.yaml",
        [
            *[o.replace("ckpt=", "predict.checkpoint=") for o in overrides],
            f"predict.output_dir={tmp_path / 'one'}",
        ],
    )
    predict(one, log=lambda s: None)
    env = plain_env(HPC_BLISS_VENV=str(JOB_VENV))
    cmd = [
        sys.executable,
        "-m",
        "hpc_bliss",
        "submit",
        "predict",
        str(CONFIGS / "sdss_m2.yaml"),
        *overrides,
        f"predict.output_dir={tmp_path / 'job'}",
        "--tasks-per-node",
        "2",
        "--time",
        "10",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"\[predict\] job (\d+)", res.stdout).group(1)
    fields = wait_for_job(job_id, timeout=300)
    log = (ROOT / "logs" / f"hpc-bliss-predict-{job_id}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert "rank 1/2" in log
    a, _ = read_catalog(tmp_path / "one" / "2583-2-136" / "catalog.h5")
    b, _ = read_catalog(tmp_path / "job" / "2583-2-136" / "catalog.h5")
    for key in COLUMNS:
        assert np.array_equal(a[key], b[key]), key


def test_the_cli_names_a_missing_checkpoint(tmp_path, capsys):
    argv = [
        "predict",
        str(CONFIGS / "sdss_m2.yaml"),
        f"survey.field={CUT}",
        f"ckpt={tmp_path / 'none.ckpt'}",
        f"predict.output_dir={tmp_path}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"hpc-bliss: error: predict.checkpoint={tmp_path / 'none.ckpt'}: no such checkpoint"
    ]
