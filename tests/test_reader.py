"""The reader (ShardDataset, dataset.h5), the inspection tools and their scripts, on one small
generated run (configs/smoke.yaml: 4 shards × 8 images of 40×40, train 0-1, val 2, test 3)."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hpc_bliss.config import load_config
from hpc_bliss.errors import ShardError
from hpc_bliss.io.inspect import format_summary, summarize, validate_dir
from hpc_bliss.io.reader import ShardDataset, VirtualDataset, open_dataset, to_tile_catalog
from hpc_bliss.io.schema import CATALOG_KEYS
from hpc_bliss.stages.generate import generate

ROOT = Path(__file__).resolve().parents[1]
SPLIT_SHARDS = {"train": [0, 1], "val": [2], "test": [3]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "data"
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"generate.output_dir={out}"])
    assert generate(cfg, log=lambda msg: None) == 0
    return out


def _copy(data_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(data_dir, dst)
    return dst


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in ("images", "background", "psf_params"):
        assert torch.equal(a[key], b[key]), key
    for key in CATALOG_KEYS:
        assert torch.equal(a["tile_catalog"][key], b["tile_catalog"][key]), key
    assert (a["shard_id"], a["index_in_shard"]) == (b["shard_id"], b["index_in_shard"])


def test_length_shapes_dtypes(data_dir):
    for split, ids in SPLIT_SHARDS.items():
        with ShardDataset(data_dir, split) as ds:
            assert len(ds) == 8 * len(ids)
            assert ds.tile_slen == 2
            assert repr(ds).endswith(f"shards={len(ids)}, images={8 * len(ids)} of {len(ds)})")
    ds = ShardDataset(data_dir, "train")
    item = ds[9]
    assert item["images"].shape == (5, 40, 40) and item["images"].dtype == torch.float32
    assert item["background"].shape == (5,) and item["background"].dtype == torch.float32
    assert item["psf_params"].shape == (5, 6) and item["psf_params"].dtype == torch.float32
    cat = item["tile_catalog"]
    assert cat.keys() == set(CATALOG_KEYS)
    assert cat["n_sources"].shape == (20, 20) and cat["n_sources"].dtype == torch.int64
    assert cat["source_type"].shape == (20, 20, 3, 1) and cat["source_type"].dtype == torch.int64
    assert cat["locs"].shape == (20, 20, 3, 2)
    assert cat["star_fluxes"].shape == (20, 20, 3, 5)
    assert cat["shear"].shape == (20, 20, 2) and cat["convergence"].shape == (20, 20, 1)
    for key in ("locs", "star_fluxes", "galaxy_fluxes", "galaxy_params", "shear"):
        assert cat[key].dtype == torch.float32
    assert (item["shard_id"], item["index_in_shard"]) == (1, 1)
    _assert_items_equal(ds[-1], ds[15])
    with pytest.raises(IndexError):
        ds[16]
    ds.close()


@pytest.mark.parametrize("split,i", [("train", 0), ("train", 7), ("train", 8), ("test", 5)])
def test_item_equals_plain_h5py(data_dir, split, i):
    ds = ShardDataset(data_dir, split)
    item = ds[i]
    shard = SPLIT_SHARDS[split][i // 8]
    path, row = ds.locate(i)
    assert path == data_dir / "shards" / f"shard-{shard:06d}.h5" and row == i % 8
    with h5py.File(path, "r") as f:
        for key in ("images", "background", "psf_params"):
            np.testing.assert_array_equal(item[key].numpy(), f[key][row])
        for key in CATALOG_KEYS:
            np.testing.assert_array_equal(
                item["tile_catalog"][key].numpy(), f["tile_catalog"][key][row]
            )
    assert (item["shard_id"], item["index_in_shard"]) == (shard, row)
    ds.close()


def test_dataset_h5_gives_identical_items(data_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # virtual sources resolve relative to dataset.h5, not the cwd
    for split in SPLIT_SHARDS:
        shards, vds = open_dataset(data_dir, split), open_dataset(data_dir / "dataset.h5", split)
        assert isinstance(shards, ShardDataset) and isinstance(vds, VirtualDataset)
        assert len(shards) == len(vds)
        for i in range(len(shards)):
            _assert_items_equal(shards[i], vds[i])
        vds.close()


def _batches(ds, workers: int) -> list[dict]:
    ctx = multiprocessing.get_context("fork") if workers else None
    loader = DataLoader(ds, batch_size=5, num_workers=workers, multiprocessing_context=ctx)
    return list(loader)


def test_dataloader_workers_match_single_process(data_dir):
    ds = ShardDataset(data_dir, "train")
    ds[0], ds[12]  # the parent opens both shard files before the workers fork
    assert len(ds._handles.files) == 2
    serial = _batches(ds, 0)
    parallel = _batches(ds, 2)
    assert not ds._handles.files  # closed before the fork, never carried across it
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["images"], b["images"])
        assert torch.equal(a["shard_id"], b["shard_id"])
        for key in CATALOG_KEYS:
            assert torch.equal(a["tile_catalog"][key], b["tile_catalog"][key])
    batch = serial[0]
    assert batch["images"].shape == (5, 5, 40, 40)
    assert batch["tile_catalog"]["n_sources"].dtype == torch.int64
    _assert_items_equal(ds[3], ShardDataset(data_dir, "train")[3])  # parent re-opens lazily
    cat = ds.to_tile_catalog(batch)
    assert cat.batch_size == 5 and cat.n_tiles_h == 20
    clone = pickle.loads(pickle.dumps(ds))  # spawn: the open files do not travel
    assert ds._handles.files and not clone._handles.files
    _assert_items_equal(clone[7], ds[7])
    ds.close()


def test_stacked_tile_catalog(data_dir):
    ds = ShardDataset(data_dir, "train")
    items = [ds[i] for i in (2, 9, 14)]
    cat = to_tile_catalog(items, ds.tile_slen)
    assert cat.tile_slen == 2 and cat.batch_size == 3 and cat.max_sources == 3
    assert cat["n_sources"].shape == (3, 20, 20) and cat["locs"].shape == (3, 20, 20, 3, 2)
    with h5py.File(data_dir / "shards" / "shard-000001.h5", "r") as f:
        want = f["tile_catalog/n_sources"][[1, 6]].astype(np.int64)
    np.testing.assert_array_equal(cat["n_sources"][1:].numpy(), want)
    one = ds.catalog(9)
    assert one.batch_size == 1 and torch.equal(one["n_sources"][0], cat["n_sources"][1])
    view = ds[[2, 9, 14]]
    assert len(view) == 3 and torch.equal(view.catalog(slice(None))["locs"], cat["locs"])
    assert torch.equal(ds.catalog([2, 9, 14])["star_fluxes"], cat["star_fluxes"])
    assert len(ds[4:12]) == 8 and ds[4:12][0]["index_in_shard"] == 4
    assert ds.select(torch.tensor([15]))[0]["shard_id"] == 1
    full = cat.to_full_catalog()
    assert torch.equal(full["n_sources"], cat["n_sources"].sum((1, 2)))
    ds.close()


def test_errors_name_the_file(data_dir, tmp_path):
    with pytest.raises(ShardError, match="manifest.json not found"):
        ShardDataset(tmp_path)
    with pytest.raises(ShardError, match="unknown split 'dev'"):
        ShardDataset(data_dir, "dev")
    broken = _copy(data_dir, tmp_path)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["shards"] = [r for r in manifest["shards"] if r["split"] != "val"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="split 'val' has no images"):
        ShardDataset(broken, "val")
    (broken / "shards" / "shard-000001.h5").unlink()
    with pytest.raises(ShardError, match="shard-000001.h5: shard file listed"):
        ShardDataset(broken, "train")
    with pytest.raises(ShardError, match="shard-000001.h5: shard file of"):
        VirtualDataset(broken / "dataset.h5", "train")


def test_summary_counts(data_dir):
    s = summarize(data_dir)
    assert {k: v["images"] for k, v in s["splits"].items()} == {"train": 16, "val": 8, "test": 8}
    assert {k: v["shards"] for k, v in s["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    assert s["images"] == 32 and s["tile_slen"] == 2
    assert len(s["sources_per_tile"]) == 4 and sum(s["sources_per_tile"]) == 32 * 20 * 20
    total = 0
    for split in SPLIT_SHARDS:
        with ShardDataset(data_dir, split) as ds:
            total += int(ds.catalog(slice(None))["n_sources"].sum())
    assert s["n_sources"] == total == s["flux"]["star"]["count"] + s["flux"]["galaxy"]["count"]
    for st in s["flux"].values():
        assert st["count"] > 0 and 0 < st["min"] <= st["median"] <= st["max"]
    assert s["missing"] == [] and s["absent"] == [] and s["unreadable"] == []
    text = format_summary(s)
    assert "train" in text and "galaxy" in text and "12800 tiles" in text
    json.dumps(s)


def test_validate_dir(data_dir, tmp_path):
    assert validate_dir(data_dir) == []
    bad = _copy(data_dir, tmp_path)
    with h5py.File(bad / "shards" / "shard-000002.h5", "r+") as f:
        f["images"][3, 1, 10, 10] += 1.0  # one pixel
    path = bad / "shards" / "shard-000003.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (bad / "shards" / "shard-000009.h5.tmp").write_bytes(b"partial")
    problems = validate_dir(bad)
    named = [Path(p.split(":")[0]).name for p in problems]
    assert (
        named.count("shard-000002.h5") == 1
        and "checksum" in problems[named.index("shard-000002.h5")]
    )
    assert "shard-000003.h5" in named
    assert "shard-000009.h5.tmp" in named
    assert "shard-000000.h5" not in named and "shard-000001.h5" not in named
    (bad / "shards" / "shard-000000.h5").unlink()
    assert any("shard-000000.h5: listed" in p and "missing" in p for p in validate_dir(bad))


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_scripts(data_dir, tmp_path):
    run = _script(ROOT / "scripts" / "inspect_shards.py", data_dir, "--validate", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "train" in run.stdout and "0 problem(s)" in run.stdout
    out = tmp_path / "img.png"
    run = _script(
        ROOT / "scripts" / "plot_shard.py",
        data_dir,
        3,
        "--split",
        "val",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _copy(data_dir, tmp_path)
    (bad / "shards" / "shard-000001.h5").write_bytes(b"not hdf5")
    run = _script(ROOT / "scripts" / "inspect_shards.py", bad, "--validate", cwd=tmp_path)
    assert run.returncode == 1 and "shard-000001.h5" in run.stdout
