"""Training: augmentation geometry, a short run lowers the loss, resume, DDP on disjoint data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.config import load_config
from hpc_bliss.io.manifest import read_manifest
from hpc_bliss.io.reader import ShardDataset
from hpc_bliss.simulate.render import Renderer
from hpc_bliss.stages.generate import generate
from hpc_bliss.stages.train import train
from hpc_bliss.train.augment import _flip, _rot90
from hpc_bliss.train.lit_module import PROVENANCE_KEY
from tests.conftest import CONFIGS, ROOT


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-data")
    assert (
        generate(
            load_config(CONFIGS / "smoke.yaml", [f"generate.output_dir={out}"]), log=lambda s: None
        )
        == 0
    )
    return out


def _cfg(data, out, *extra):
    return load_config(
        CONFIGS / "smoke.yaml",
        [f"train.data_dir={data}", f"train.output_dir={out}", "train.num_workers=0", *extra],
    )


@pytest.mark.parametrize("op", [_flip, _rot90, lambda it: _rot90(_flip(it))])
def test_augmentation_moves_catalog_with_image(smoke_data, op):
    """Rendering the transformed catalog gives the transformed image (galaxy angles, shear)."""
    cfg = load_config(CONFIGS / "smoke.yaml")
    renderer = Renderer(cfg.render, 40, 40)
    ds = ShardDataset(smoke_data, "train")
    item = ds[1]
    item["images"] = renderer.noiseless(ds.to_tile_catalog(item))[0]
    moved = op(item)
    again = renderer.noiseless(
        TileCatalog(2, {k: v[None] for k, v in moved["tile_catalog"].items()})
    )[0]
    scale = item["images"].abs().amax(dim=(1, 2), keepdim=True)
    assert ((again - moved["images"]).abs() / scale).max() < 1e-4
    assert torch.equal(
        moved["tile_catalog"]["n_sources"].sum(), item["tile_catalog"]["n_sources"].sum()
    )


def _metrics(out):
    rows = list(csv.DictReader(open(next(Path(out).glob("logs/version_*/metrics.csv")))))
    return [float(r["val/loss"]) for r in rows if r.get("val/loss")]


def test_short_run_lowers_the_loss_and_resumes(smoke_data, tmp_path):
    out = tmp_path / "train"
    # last.ckpt is written every 5 steps and at each epoch's end, by two callbacks: one file
    common = ["train.learning_rate=3e-3", "train.checkpoint_every_steps=5"]
    first = train(_cfg(smoke_data, out, "train.max_epochs=6", *common))
    losses = _metrics(out)
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    assert Path(first["best"]).is_file() and Path(first["last"]).is_file()
    ckpt = torch.load(first["last"], weights_only=True)  # no pickled objects inside
    assert ckpt["global_step"] == first["global_step"] == 12
    second = train(_cfg(smoke_data, out, "train.max_epochs=8", *common))
    assert second["global_step"] == 16  # resumed from last.ckpt, not from zero
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    resumed = torch.load(second["last"], weights_only=True)
    assert resumed["global_step"] == 16
    # every checkpoint records the training data's config (what survey it was trained for)
    recorded = read_manifest(smoke_data)["config_yaml"]
    assert ckpt[PROVENANCE_KEY] == resumed[PROVENANCE_KEY] == {"config_yaml": recorded}


def test_ddp_two_processes_train_on_disjoint_data(smoke_data, tmp_path):
    """`hpc-bliss train` with train.devices=2 (Lightning starts the second process); each
    rank's items/rank-R.json (train.record_items) lists the images it read, per epoch."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "hpc_bliss",
        "train",
        str(CONFIGS / "smoke.yaml"),
        f"train.data_dir={smoke_data}",
        f"train.output_dir={out}",
        "train.devices=2",
        "train.accelerator=cpu",
        "train.max_epochs=2",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.augment=false",
        "train.record_items=true",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = res.stdout + res.stderr
    for rank in (0, 1):
        assert f"[train rank {rank}/2 " in printed and "backend gloo" in printed, printed[-3000:]
    records = [json.loads((out / "items" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["backend"]) for r in records] == [
        (0, 2, "gloo"),
        (1, 2, "gloo"),
    ]
    seen = [[(int(e), s, i) for e, items in r["epochs"].items() for s, i in items] for r in records]
    for epoch in (0, 1):
        a = {(s, i) for e, s, i in seen[0] if e == epoch}
        b = {(s, i) for e, s, i in seen[1] if e == epoch}
        assert a and b and not a & b, "both ranks train, on disjoint images"
        assert len(a | b) == 16  # together they cover the 16 training images
    order0 = [(s, i) for e, s, i in seen[0] if e == 0]
    order1 = [(s, i) for e, s, i in seen[0] if e == 1]
    assert order0 != order1, "shuffled anew each epoch (set_epoch)"
