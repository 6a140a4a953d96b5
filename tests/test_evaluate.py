"""The evaluate stage end to end on smoke data: report files, the merge across processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import load_config
from hpc_bliss.errors import ConfigError
from hpc_bliss.evaluate.scoring import interior
from hpc_bliss.stages.evaluate import evaluate
from hpc_bliss.stages.generate import generate
from hpc_bliss.stages.train import train
from hpc_bliss.train.checkpoint import load_encoder
from tests.conftest import CONFIGS, ROOT
from tests.mpi_utils import MPI_ENV, mpirun


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data, out = root / "data", root / "train"
    overrides = [
        f"generate.output_dir={data}",
        "generate.n_shards=8",
        "generate.split=[0.5,0.25,0.25]",
        f"train.data_dir={data}",
        f"train.output_dir={out}",
        "train.max_epochs=2",
        "train.num_workers=0",
        f"evaluate.data_dir={data}",
    ]
    cfg = load_config(CONFIGS / "smoke.yaml", overrides)
    assert generate(cfg, log=lambda s: None) == 0
    result = train(cfg)
    return root, overrides + [f"evaluate.checkpoint={result['best']}"]


def test_report_files_and_numbers(trained):
    root, overrides = trained
    cfg = load_config(CONFIGS / "smoke.yaml", [*overrides, f"evaluate.output_dir={root / 'r1'}"])
    lines = []
    report = evaluate(cfg, log=lines.append)
    for name in (
        "report.json",
        "report.md",
        "confusion.png",
        "detection_vs_mag.png",
        "example.png",
        "reliability.png",
    ):
        assert (root / "r1" / name).stat().st_size > 0, name
    on_disk = json.loads((root / "r1" / "report.json").read_text())
    for key in (
        "n_sources_accuracy",
        "n_sources_within_1",
        "precision",
        "recall",
        "f1",
        "classification_accuracy",
    ):
        assert key in on_disk["encoder"] and key in on_disk["sep"]
    assert 0 <= report["encoder"]["n_sources_accuracy"] <= 1
    assert report["n_tiles"] == 2 * 8 * 18 * 18  # 2 test shards of 8 images, 20×20 tiles − border
    assert report["test_shards"] == [6, 7]
    assert report["most_frequent"]["count"] == 0
    assert any("n_sources accuracy: encoder" in line for line in lines)
    # both matching rules, flux bias and scatter, and the posterior's calibration
    for method in ("encoder_strict", "sep_strict"):
        assert set(on_disk[method]) >= {"precision", "recall", "f1", "detection"}
    assert on_disk["matching"]["strict"] == {"max_distance_px": 0.5, "max_abs_dmag_r": 0.5}
    tables = [on_disk[k]["detection"]["flux_ratio"] for k in ("encoder", "sep")]
    assert any(tables)  # None where a method has no matched pair (a 2-epoch encoder may not)
    for table in filter(None, tables):
        assert {"median", "p16", "p84", "n", "bright_median_abs_error"} <= set(table)
    cal = on_disk["calibration"]
    samples = getattr(cfg.evaluate, "calibration_samples", 100)
    assert cal["n_samples"] == samples and cal["levels"] == [50, 80, 90]
    assert 0 <= cal["reliability"]["ece"] <= 1 and cal["reliability"]["classes"][-1] == ">=2"
    assert cal["count_coverage"]["image"]["n"] == 16 and cal["nll"]["tiles"] == report["n_tiles"]
    text = (root / "r1" / "report.md").read_text()
    for heading in ("## Detection by two matching rules", "## Fluxes of matched sources"):
        assert heading in text
    assert f"## Posterior calibration ({samples} samples" in text and "reliability.png" in text
    assert "**mean** of |pred/true − 1|" in text


def test_calibration_can_be_turned_off(trained, tmp_path):
    root, overrides = trained
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        [*overrides, f"evaluate.output_dir={tmp_path}", "evaluate.calibration_samples=0"],
    )
    report = evaluate(cfg, log=lambda s: None)
    assert report is not None and "calibration" not in report
    assert not (tmp_path / "reliability.png").exists()
    assert "Posterior calibration" not in (tmp_path / "report.md").read_text()


def test_checkpoint_loads_with_weights_only(trained):
    _, overrides = trained
    ckpt = [o for o in overrides if o.startswith("evaluate.checkpoint=")][0].split("=", 1)[1]
    encoder, hp = load_encoder(ckpt, torch.device("cpu"))
    assert hp["tile_slen"] == 2 and not encoder.training


def test_interior_keeps_sources_in_the_box():
    cat = FullCatalog(
        10,
        10,
        {
            "n_sources": torch.tensor([3]),
            "plocs": torch.tensor([[[1.0, 1.0], [5.0, 5.5], [9.5, 3.0]]]),
        },
    )
    inner = interior(cat, 2.0, 6, 6)
    assert int(inner["n_sources"][0]) == 1
    torch.testing.assert_close(inner["plocs"][0, 0], torch.tensor([3.0, 3.5]))


@pytest.mark.mpi
def test_two_processes_equal_one(trained):
    root, overrides = trained
    # two test shards: each process scores one, rank 0 adds the counts
    cmd = [
        *mpirun(2),
        sys.executable,
        "-m",
        "hpc_bliss",
        "evaluate",
        str(CONFIGS / "smoke.yaml"),
        *overrides,
        f"evaluate.output_dir={root / 'r2'}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    one = json.loads((root / "r1" / "report.json").read_text()) if (root / "r1").exists() else None
    if one is None:
        cfg = load_config(
            CONFIGS / "smoke.yaml", [*overrides, f"evaluate.output_dir={root / 'r1'}"]
        )
        one = evaluate(cfg, log=lambda s: None)
    two = json.loads((root / "r2" / "report.json").read_text())
    assert two["processes"] == 2
    for key in ("encoder", "sep", "encoder_strict", "sep_strict", "most_frequent", "n_tiles"):
        assert two[key] == one[key], key
    # calibration too, the NLL included: every rank uses evaluate.cpu_threads torch threads, so
    # the network's float32 outputs are bitwise those of one process, and the sums are exact
    assert two["calibration"] == one["calibration"]
    assert Path(root / "r2" / "report.md").exists()


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, capsys):
    from hpc_bliss.cli import main

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    assert main(["evaluate", str(CONFIGS / "smoke.yaml"), f"ckpt={text}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(text) in err[0] and "expected a .ckpt" in err[0], err
    other = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert main(["evaluate", str(CONFIGS / "smoke.yaml"), f"ckpt={other}"]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "hyper_parameters" in err


def test_a_config_that_does_not_match_the_data_is_refused(trained):
    root, overrides = trained
    # smoke data and a smoke checkpoint scored with the m2 prior (5 bands, 112×112 px)
    cfg = load_config(CONFIGS / "m2.yaml", [*overrides, f"evaluate.output_dir={root / 'm2'}"])
    with pytest.raises(ConfigError, match="does not match the data in") as err:
        evaluate(cfg, log=lambda s: None)
    assert "112×112" in str(err.value) and str(overrides[0].split("=", 1)[1]) in str(err.value)
    assert not (root / "m2").exists()


def test_a_checkpoint_that_does_not_match_the_data_is_refused(trained, tmp_path):
    root, overrides = trained
    from hpc_bliss.train.lit_module import EncoderModule

    hp = torch.load(overrides[-1].split("=", 1)[1], weights_only=True)["hyper_parameters"]
    module = EncoderModule(n_bands=hp["n_bands"], tile_slen=4, hidden=hp["hidden"])
    other = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, other)
    cfg = load_config(CONFIGS / "smoke.yaml", [*overrides, f"evaluate.checkpoint={other}"])
    with pytest.raises(ConfigError, match=f"checkpoint {other} was trained on .* 4-px tiles"):
        evaluate(cfg, log=lambda s: None)


def test_the_default_checkpoint_is_the_best_else_the_last(trained, tmp_path):
    import shutil

    root, overrides = trained
    ckpt = Path(overrides[-1].split("=", 1)[1])
    only_last = tmp_path / "train" / "checkpoints"
    only_last.mkdir(parents=True)
    shutil.copy(ckpt.with_name("last.ckpt"), only_last / "last.ckpt")
    wired = [o for o in overrides if not o.startswith(("evaluate.checkpoint=", "train.output"))]
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        [*wired, f"train.output_dir={tmp_path / 'train'}", f"evaluate.output_dir={tmp_path / 'e'}"],
    )
    assert cfg.evaluate.checkpoint == str(only_last / "best.ckpt")
    lines: list[str] = []
    report = evaluate(cfg, log=lines.append)
    assert report is not None and report["checkpoint"] == str(only_last / "last.ckpt")
    assert f"[evaluate] no {only_last / 'best.ckpt'}: using {only_last / 'last.ckpt'}" in lines
