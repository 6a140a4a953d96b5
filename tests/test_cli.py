"""The command line, end to end in-process."""

import h5py

from hpc_bliss.cli import main
from tests.conftest import CONFIGS


def test_simulate_writes_a_png_and_a_summary(tmp_path, capsys):
    assert main(["simulate", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sources per image" in out and "images/s" in out
    assert (tmp_path / "sample.png").stat().st_size > 10_000


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


def test_pipeline_runs_every_stage_and_resumes(tmp_path, capsys):
    dirs = [
        f"generate.output_dir={tmp_path / 'data'}",
        f"train.output_dir={tmp_path / 'train'}",
        f"evaluate.output_dir={tmp_path / 'eval'}",
        "train.num_workers=0",
    ]
    assert main(["pipeline", str(CONFIGS / "smoke.yaml"), *dirs]) == 0
    out = capsys.readouterr().out
    assert "[pipeline] 3/3 evaluate" in out and "n_sources accuracy: encoder" in out
    assert (tmp_path / "eval" / "report.json").is_file()
    assert main(["pipeline", str(CONFIGS / "smoke.yaml"), *dirs]) == 0
    again = capsys.readouterr().out
    assert again.count("exists and is valid: skipped") == 4  # generation resumed, not redone
