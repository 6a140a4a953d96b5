"""The command line, end to end."""

import json

import h5py
import pytest
import torch

from hpc_bliss.cli import main, parse
from hpc_bliss.plotting import RAMP, text_picture
from tests.conftest import CONFIGS


def test_simulate_writes_a_png_and_a_summary(tmp_path, capsys):
    assert main(["simulate", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--text"]) == 0
    out = capsys.readouterr().out
    assert "sources per image" in out and "images/s" in out
    picture = out.split("(S star, G galaxy):\n")[1].splitlines()
    assert len(picture) == 40 and max(map(len, picture)) <= 80  # 40×40 px, 2 characters each
    assert (tmp_path / "sample.png").stat().st_size > 10_000


def test_text_picture_shades_and_marks() -> None:
    image = torch.zeros(6, 8)
    image[2, 5] = 100.0  # the brightest pixel: the top of the ramp
    lines = text_picture(image, torch.tensor([[2.5, 5.5], [4.2, 1.9]]), torch.tensor([0, 1]))
    assert len(lines) == 6
    assert lines[2][10] == "S" and lines[4][2] == "G"  # row 2 col 5; row 4 col 1
    image[2, 5], image[0, 7] = 0.0, 100.0
    assert text_picture(image, torch.zeros(0, 2), torch.zeros(0))[0].endswith(RAMP[-1] * 2)
    wide = text_picture(torch.rand(10, 100), torch.zeros(0, 2), torch.zeros(0), max_width=48)
    assert len(wide) == 3 and max(map(len, wide)) <= 2 * 34  # reduced by 3: 3 × 33 pixels


def test_generate_inspect_validate(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["generate", str(CONFIGS / "smoke.yaml"), f"generate.output_dir={data}"]) == 0
    assert main(["inspect", str(data), "--validate"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    with h5py.File(data / "shards" / "shard-000002.h5", "r+") as f:
        f["tile_catalog/n_sources"][0, 0, 0] += 1
    assert main(["validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert "INVALID: " in out and "shard-000002.h5" in out


def test_bad_config_is_one_line_error(tmp_path, capsys):
    assert main(["simulate", str(CONFIGS / "smoke.yaml"), "prior.max_sources=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpc-bliss: error:") and "prior.max_sources" in err
    assert main(["validate", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().out


def test_overrides_before_between_and_after_options() -> None:
    argv = ["submit", "train", "c.yaml", "a=1", "--nodes", "2", "b=2", "--wait", "c=3"]
    args = parse(argv)
    assert (args.overrides, args.nodes, args.wait) == (["a=1", "b=2", "c=3"], 2, True)
    for bad in (["submit", "train", "c.yaml", "--no-such-flag"], ["inspect", "d", "x=1"]):
        with pytest.raises(SystemExit):  # argparse's usage error, exit status 2
            parse(bad)


def test_pipeline_runs_every_stage_and_resumes(tmp_path, capfd):
    """2 MPI ranks generate and evaluate, 2 CPU DDP processes train; a rerun resumes."""
    dirs = [
        f"generate.output_dir={tmp_path / 'data'}",
        f"train.output_dir={tmp_path / 'train'}",
        f"evaluate.output_dir={tmp_path / 'eval'}",
        "train.num_workers=0",
    ]
    assert main(["pipeline", str(CONFIGS / "smoke.yaml"), *dirs]) == 0
    out = capfd.readouterr().out
    assert "(2 rank(s))" in out and "(2 cpu process(es))" in out
    assert "n_sources accuracy: encoder" in out and "[pipeline] done" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["processes"] == 2 and 0 <= report["encoder"]["n_sources_accuracy"] <= 1
    assert main(["pipeline", str(CONFIGS / "smoke.yaml"), *dirs]) == 0
    again = capfd.readouterr().out
    assert again.count("exists and is valid: skipped") == 4  # generation resumed, not redone
