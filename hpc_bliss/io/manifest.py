"""The run's index: which shard is in which split, manifest.json, and dataset.h5 (HDF5 virtual
datasets presenting each split's shards as one array, without copying data).

dataset.h5 layout (the same as the collective ``mpio`` file, where the data are real)::

    /                     attrs: schema_version, config_hash, config_yaml, n_shards
    /{split}/images       (N_split, B, H, W)   virtual, over the split's shards in id order
    /{split}/background, /{split}/psf_params, /{split}/tile_catalog/{key}
    /{split}/shard_id     int64 (N_split,)     which shard each image comes from
    /{split}/index_in_shard int64 (N_split,)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np

from hpc_bliss.errors import ConfigError
from hpc_bliss.io.shards import DATASET_NAMES, SCHEMA_VERSION, shard_name

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
DATASET = "dataset.h5"


def split_counts(n_shards: int, fractions: list[float]) -> dict[str, int]:
    """Shards per split: val and test get ceil(fraction · n) (at least one if the fraction is
    positive), train the rest."""
    n_val = math.ceil(n_shards * fractions[1]) if fractions[1] > 0 else 0
    n_test = math.ceil(n_shards * fractions[2]) if fractions[2] > 0 else 0
    n_train = n_shards - n_val - n_test
    if n_train < 1 and fractions[0] > 0:
        raise ConfigError(
            f"generate.n_shards={n_shards} is too few for generate.split={list(fractions)}: "
            f"val takes {n_val} and test {n_test}, leaving no training shard"
        )
    return {"train": n_train, "val": n_val, "test": n_test}


def split_of(shard_id: int, n_shards: int, fractions: list[float]) -> str:
    """The split of a shard: a function of its id alone (train first, then val, then test)."""
    counts = split_counts(n_shards, fractions)
    if shard_id < counts["train"]:
        return "train"
    return "val" if shard_id < counts["train"] + counts["val"] else "test"


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a generate.output_dir?")
    return json.loads(path.read_text())


def write_virtual_dataset(out_dir: Path, shards: list[dict], attrs: dict) -> Path:
    """dataset.h5 over the shards listed (dicts with id, file, split, n_images), written to
    a temporary name and renamed. Source paths are relative to ``out_dir``."""
    out_dir = Path(out_dir)
    path = out_dir / DATASET
    tmp = out_dir / (DATASET + ".tmp")
    with h5py.File(tmp, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["schema_version"] = SCHEMA_VERSION
        for split in SPLITS:
            members = sorted((s for s in shards if s["split"] == split), key=lambda s: s["id"])
            if not members:
                continue
            group = f.create_group(split)
            with h5py.File(out_dir / members[0]["file"], "r") as first:
                layouts = {
                    name: (first[name].shape[1:], first[name].dtype) for name in DATASET_NAMES
                }
                units = {name: first[name].attrs.get("units", "") for name in layouts}
            total = sum(s["n_images"] for s in members)
            for name, (tail, dtype) in layouts.items():
                layout = h5py.VirtualLayout(shape=(total, *tail), dtype=dtype)
                start = 0
                for s in members:
                    n = s["n_images"]
                    source = h5py.VirtualSource(s["file"], name, shape=(n, *tail))
                    layout[start : start + n] = source
                    start += n
                # No modification times (h5py's ordinary datasets have none; its virtual ones
                # get HDF5's default), so dataset.h5 is the same bytes whoever writes it.
                layout.dcpl.set_obj_track_times(False)
                dset = group.create_virtual_dataset(name, layout, fillvalue=0)
                dset.attrs["units"] = units[name]
            group["shard_id"] = np.concatenate(
                [np.full(s["n_images"], s["id"], dtype=np.int64) for s in members]
            )
            group["index_in_shard"] = np.concatenate(
                [np.arange(s["n_images"], dtype=np.int64) for s in members]
            )
    os.replace(tmp, path)
    return path


def shard_path(out_dir: Path, shard_id: int) -> Path:
    return Path(out_dir) / "shards" / shard_name(shard_id)
