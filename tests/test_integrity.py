"""Shards detect corruption on every read: Fletcher-32 on every dataset, a damaged chunk named
by the reader, train (fail / skip) and evaluate; `validate --refresh` after a deliberate edit;
older shards without checksums (configs/smoke.yaml: shards 0-1 train, 2 val, 3 test)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from hpc_bliss.cli import main
from hpc_bliss.config import load_config
from hpc_bliss.errors import ShardError
from hpc_bliss.io.collective import CollectiveWriter, layouts_for
from hpc_bliss.io.inspect import format_summary, summarize, validate_dir
from hpc_bliss.io.reader import ShardDataset, VirtualDataset
from hpc_bliss.io.schema import CATALOG_DTYPES, DATASET_NAMES
from hpc_bliss.io.shards import ShardData, rewrite_shard, validate_shard, write_shard
from hpc_bliss.stages import train as train_stage
from hpc_bliss.stages.evaluate import evaluate
from hpc_bliss.stages.generate import generate
from hpc_bliss.train.lit_module import EncoderModule
from tests.conftest import CONFIGS, ROOT
from tests.mpi_utils import MPI_ENV, mpirun

BAD_ROW = 3  #: the row (image) of shard 1 (train) or 3 (test) whose chunk is damaged


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "data"
    cfg = load_config(CONFIGS / "smoke.yaml", [f"generate.output_dir={out}"])
    assert generate(cfg, log=lambda msg: None) == 0
    return out


@pytest.fixture
def data(clean, tmp_path) -> Path:
    """A fresh copy of the clean run, to damage or edit."""
    return Path(shutil.copytree(clean, tmp_path / "data"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An (untrained) encoder checkpoint of the smoke shape: evaluate loads it."""
    module = EncoderModule(n_bands=5, tile_slen=2, hidden=8, n_blocks=1)
    path = tmp_path_factory.mktemp("ckpt") / "enc.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def shard(data: Path, shard_id: int) -> Path:
    return data / "shards" / f"shard-{shard_id:06d}.h5"


def damage(path: Path, name: str = "images", row: int = BAD_ROW) -> None:
    """Overwrite bytes in the middle of the chunk holding ``row`` of ``name``, on disk (not
    through HDF5): the chunk's file offset comes from HDF5's chunk index, so the zeros land in
    the data, never in metadata."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(row)
    assert info.chunk_offset[0] == row and info.size > 64
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 4)
        fh.write(b"\0" * min(4096, info.size // 2))


def snapshot(data: Path) -> dict[str, str]:
    """SHA-256 of every file under ``data``: to show that nothing was modified."""
    files = sorted(p for p in data.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(captured: str) -> str:
    """The CLI's error line (there must be exactly one, of one line)."""
    lines = [line for line in captured.splitlines() if line.startswith("hpc-bliss: error:")]
    assert len(lines) == 1, captured[-3000:]
    assert "Traceback" not in captured, captured[-3000:]
    return lines[0]


def assert_names_the_damage(message: str, path: Path, row: int = BAD_ROW) -> None:
    assert str(path) in message and f"dataset images, row {row}" in message, message
    assert "failed its Fletcher-32 checksum" in message, message


def test_every_dataset_has_checksums_and_h5py_alone_detects_damage(clean, data):
    with h5py.File(shard(clean, 1), "r") as f:
        assert [n for n in DATASET_NAMES if not f[n].fletcher32] == []
        assert {f[n].chunks[0] for n in DATASET_NAMES} == {1}
    damage(shard(data, 1))
    with h5py.File(shard(data, 1), "r") as f:
        f["images"][BAD_ROW - 1]  # the neighbouring chunks read
        with pytest.raises(OSError):
            f["images"][BAD_ROW]
        with pytest.raises(OSError):
            f["images"][()]


def test_empty_and_unchecked_shards_are_writable(tmp_path):
    def arrays(n: int) -> ShardData:
        return ShardData(
            images=np.ones((n, 2, 4, 4), np.float32),
            background=np.ones((n, 2), np.float32),
            psf_params=np.ones((n, 2, 6), np.float32),
            catalog={k: np.ones((n, 2, 2, 1, 1), np.dtype(d)) for k, d in CATALOG_DTYPES.items()},
        )

    attrs = {"shard_id": 0, "split": "train", "seed": 0, "config_yaml": "", "config_hash": "h"}
    attrs |= {"rank": 0, "device": "cpu"}
    write_shard(tmp_path / "empty.h5", arrays(0), attrs)
    write_shard(tmp_path / "bare.h5", arrays(3), attrs, checksums=False)
    assert validate_shard(tmp_path / "empty.h5") == validate_shard(tmp_path / "bare.h5") == []
    with h5py.File(tmp_path / "empty.h5") as f, h5py.File(tmp_path / "bare.h5") as g:
        assert f["images"].shape == (0, 2, 4, 4) and f["images"].fletcher32
        assert not any(g[n].fletcher32 for n in DATASET_NAMES)


def test_the_one_process_collective_file_has_checksums(tmp_path):
    cfg = SimpleNamespace(
        prior=SimpleNamespace(
            bands=["r"], image_height=4, image_width=4, tile_slen=2, max_sources=1
        ),
        render=SimpleNamespace(units="nmgy"),
    )
    path = tmp_path / "collective.h5"
    with CollectiveWriter(path, None, {"train": 2}, layouts_for(cfg), {"config_hash": "h"}):
        pass
    with h5py.File(path, "r") as f:
        names = [n for n in f["train"]] + [f"tile_catalog/{k}" for k in f["train/tile_catalog"]]
        assert all(f["train"][n].fletcher32 for n in names if n != "tile_catalog")


def test_reader_names_file_dataset_and_row(data):
    damage(shard(data, 1))
    ds = ShardDataset(data, "train")
    ds[8 + BAD_ROW - 1]
    with pytest.raises(ShardError) as err:
        ds[8 + BAD_ROW]
    assert_names_the_damage(str(err.value), shard(data, 1))
    assert "\n" not in str(err.value)
    vds = VirtualDataset(data / "dataset.h5", "train")
    with pytest.raises(ShardError) as err:
        vds[8 + BAD_ROW]
    assert_names_the_damage(str(err.value), shard(data, 1))
    assert "read through" in str(err.value) and "dataset.h5" in str(err.value)
    problems = validate_dir(data)
    assert len(problems) == 1
    assert_names_the_damage(problems[0], shard(data, 1))


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(CONFIGS / "smoke.yaml"),
        f"train.data_dir={data}",
        f"train.output_dir={out}",
        "train.max_epochs=1",
        "train.accelerator=cpu",
        *extra,
    ]


def test_train_fail_stops_with_one_line_naming_the_shard(data, tmp_path, capsys):
    """The damaged chunk is read in a DataLoader worker process (num_workers=2): its error
    reaches the main process wrapped in a traceback, and still prints as one line."""
    damage(shard(data, 1))
    assert main(_train_args(data, tmp_path / "out", "train.num_workers=2")) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert_names_the_damage(line, shard(data, 1))
    assert "train.on_bad_shard=skip" in line


def test_train_skip_leaves_the_bad_shard_out_and_reports_it(data, tmp_path, capsys):
    damage(shard(data, 1))
    out = tmp_path / "out"
    cfg = load_config(CONFIGS / "smoke.yaml", _train_args(data, out, "train.num_workers=0")[2:])
    cfg.train.on_bad_shard = "skip"
    assert train_stage.run(cfg) == 0
    printed = capsys.readouterr().out
    assert f"skipping train shard 000001 (8 images): {shard(data, 1)}" in printed
    assert "[train] skipped 8 images: 1 bad shard(s) [1] left out" in printed
    metrics = (next(out.glob("logs/version_*/metrics.csv"))).read_text().splitlines()
    header = metrics[0].split(",")
    row = dict(zip(header, metrics[1].split(","), strict=True))
    assert (row["data/skipped_images"], row["data/skipped_shards"]) == ("8.0", "1.0")


def test_train_skip_with_nothing_bad_skips_nothing(clean, tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", _train_args(clean, tmp_path, "train.max_steps=1")[2:])
    cfg.train.on_bad_shard, cfg.train.num_workers = "skip", 0
    result = train_stage.train(cfg)
    assert result["skipped_shards"] == [] and result["metrics"]["data/skipped_images"] == 0


def _evaluate_cfg(data: Path, checkpoint: Path, out: Path):
    return load_config(
        CONFIGS / "smoke.yaml",
        [
            f"evaluate.data_dir={data}",
            f"evaluate.checkpoint={checkpoint}",
            f"evaluate.output_dir={out}",
            "train.on_bad_shard=skip",  # training's setting: evaluate never skips
        ],
    )


def test_evaluate_fails_on_a_damaged_test_shard(data, checkpoint, tmp_path):
    damage(shard(data, 3))
    with pytest.raises(ShardError) as err:
        evaluate(_evaluate_cfg(data, checkpoint, tmp_path / "ev"), log=lambda s: None)
    assert_names_the_damage(str(err.value), shard(data, 3))
    assert "never skipping" in str(err.value)
    assert not (tmp_path / "ev" / "report.json").exists()


def test_evaluate_fails_on_an_edit_not_refreshed(data, checkpoint, tmp_path):
    with h5py.File(shard(data, 3), "r+") as f:  # through HDF5: the checksums stay right
        f["images"][0] = 2 * f["images"][0]
    with pytest.raises(ShardError, match="does not match content_sha256") as err:
        evaluate(_evaluate_cfg(data, checkpoint, tmp_path / "ev"), log=lambda s: None)
    assert str(shard(data, 3)) in str(err.value)


@pytest.mark.mpi
@pytest.mark.slow
def test_evaluate_stops_every_rank_on_a_damaged_shard(data, checkpoint, tmp_path):
    """Two ranks, the damaged test shard on rank 0 and none on rank 1: both stop, exit 2."""
    damage(shard(data, 3))
    cmd = [*mpirun(2), sys.executable, "-m", "hpc_bliss", "evaluate", str(CONFIGS / "smoke.yaml")]
    cmd += [f"evaluate.data_dir={data}", f"ckpt={checkpoint}", f"evaluate.output_dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    # one error per rank; split on the prefix, not on newlines: with PYTHONUNBUFFERED a print's
    # text and its newline are two writes, and mpirun may interleave the two ranks' between them
    marker = "hpc-bliss: error:"
    errors = [marker + part.split("\n")[0] for part in res.stderr.split(marker)[1:]]
    assert len(errors) == 2, res.stderr[-3000:]
    for line in errors:
        assert_names_the_damage(line, shard(data, 3))


def test_refresh_accepts_an_edit_through_h5py(data, capsys):
    with h5py.File(shard(data, 2), "r+") as f:
        old = f.attrs["content_sha256"]
        f["images"][1] = 0.5 * f["images"][1]
    assert len(validate_dir(data)) == 1
    assert main(["validate", "--refresh", str(data)]) == 0
    assert "[validate] 0 problem(s)" in capsys.readouterr().out
    assert validate_dir(data) == []
    manifest = json.loads((data / "manifest.json").read_text())
    (edit,) = manifest["edited"]
    with h5py.File(shard(data, 2), "r") as f:
        new, utc = f.attrs["content_sha256"], f.attrs["edited_utc"]
    assert edit == {
        "id": 2,
        "file": "shards/shard-000002.h5",
        "utc": utc,
        "old_sha256": old,
        "new_sha256": new,
    }
    assert new != old and manifest["shards"][2]["content_sha256"] == new
    # a rerun of generate keeps the edited shard (it validates) and its entry
    cfg = load_config(CONFIGS / "smoke.yaml", [f"generate.output_dir={data}"])
    assert generate(cfg, log=lambda msg: None) == 0
    assert json.loads((data / "manifest.json").read_text())["edited"] == [edit]


def _retype(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        values = f["psf_params"][()]
        del f["psf_params"]
        f.create_dataset("psf_params", data=values.astype(np.float64))


def _reshape(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        values = f["psf_params"][()]
        del f["psf_params"]
        f.create_dataset("psf_params", data=values[:, :, :5])


@pytest.mark.parametrize(
    "change,expected",
    [
        (_retype, "dataset psf_params is (8, 5, 6) float64, expected (8, 5, 6) float32"),
        (_reshape, "dataset psf_params is (8, 5, 5) float32, expected (8, 5, 6) float32"),
        (damage, f"dataset images, row {BAD_ROW}: the data failed its Fletcher-32 checksum"),
    ],
)
def test_refresh_refuses_and_modifies_nothing(data, capsys, change, expected):
    with h5py.File(shard(data, 0), "r+") as f:  # an edit it would accept, in another shard
        f["background"][0] = 1.0
    change(shard(data, 2))
    before = snapshot(data)
    assert main(["validate", "--refresh", str(data)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "nothing was modified" in line and f"{shard(data, 2)}: {expected}" in line, line
    if change is damage:
        assert "not accepted as an edit" in line
    assert snapshot(data) == before


def test_inspect_names_shards_without_checksums_and_refresh_adds_them(data, capsys):
    assert "checksums: Fletcher-32 on every dataset of all 4 shard file(s)" in format_summary(
        summarize(data)
    )
    rewrite_shard(shard(data, 1), shard(data, 1), checksums=False)  # as written before them
    summary = summarize(data)
    assert summary["checksums"]["unprotected"] == [str(shard(data, 1))]
    assert "checksums: NONE in 1 of 4 shard file(s) (shard-000001.h5)" in format_summary(summary)
    assert main(["inspect", "--json", str(data)]) == 0
    printed = json.loads(capsys.readouterr().out)["checksums"]
    assert printed == {"algorithm": "Fletcher-32", "files": 4, "unprotected": [str(shard(data, 1))]}
    sha = json.loads((data / "manifest.json").read_text())["shards"][1]["content_sha256"]
    assert main(["validate", "--refresh", str(data)]) == 0
    assert summarize(data)["checksums"]["unprotected"] == []
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["edited"] == [] and manifest["shards"][1]["content_sha256"] == sha
    assert validate_dir(data) == []
