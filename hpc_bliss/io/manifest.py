"""The run's index: which shard is in which split; manifest.json (:class:`Manifest`), written by
:func:`write_manifest` from :func:`make_manifest` and the records of :func:`shard_file_record` /
:func:`collective_record`, read by :func:`read_manifest`; and dataset.h5 (HDF5 virtual
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
import socket
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.io.schema import (
    DATASET_NAMES,
    SCHEMA_VERSION,
    SPECS,
    Manifest,
    ShardFailure,
    ShardRecord,
    content_sha256,
    shard_name,
)
from hpc_bliss.io.shards import ShardData

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
DATASET = "dataset.h5"
COLLECTIVE = "collective.h5"  #: the one file of generate.io=mpio (see hpc_bliss.io.collective)


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


def private_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other writer (host, pid) uses."""
    return path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = private_tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(data_dir: str | os.PathLike) -> Manifest:
    """``data_dir/manifest.json``; :class:`ShardError` naming it when it is missing, unreadable
    or not JSON."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path} not found: is {data_dir} a generate.output_dir?")
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ShardError(f"{path}: cannot read ({err})") from err
    except ValueError as err:
        raise ShardError(f"{path}: not valid JSON ({err})") from err


def make_manifest(
    config_hash: str,
    config_yaml: str,
    n_shards: int,
    images_per_shard: int,
    records: list[ShardRecord],
    failures: list[ShardFailure],
    ranks: int,
    io: str,
) -> Manifest:
    """The manifest of a run: its shards (in id order), the splits' shard ids and images, the
    shards missing from ``range(n_shards)`` and why (``failures``), and how many ranks wrote."""
    records = sorted(records, key=lambda r: r["id"])
    done = {r["id"] for r in records}
    return {
        "schema_version": SCHEMA_VERSION,
        "config_hash": config_hash,
        "config_yaml": config_yaml,
        "n_shards": n_shards,
        "images_per_shard": images_per_shard,
        "splits": {s: [r["id"] for r in records if r["split"] == s] for s in SPLITS},
        "images": {s: sum(r["n_images"] for r in records if r["split"] == s) for s in SPLITS},
        "shards": records,
        "missing": [sid for sid in range(n_shards) if sid not in done],
        "failures": sorted(failures, key=lambda f: f["id"]),
        "ranks": ranks,
        "io": io,
    }


def write_manifest(out_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``out_dir/manifest.json`` atomically; returns its path."""
    path = Path(out_dir) / MANIFEST
    write_json_atomic(path, dict(manifest))
    return path


def shard_file_record(path: Path, attrs: dict, seconds: float = 0.0) -> ShardRecord:
    """The manifest entry of a shard file, from its root attributes (as written or read)."""
    return {
        "id": int(attrs["shard_id"]),
        "file": f"shards/{path.name}",
        "split": attrs["split"],
        "n_images": int(attrs["n_images"]),
        "bytes": path.stat().st_size,
        "content_sha256": attrs["content_sha256"],
        "rank": int(attrs["rank"]),
        "host": attrs["host"],
        "device": attrs["device"],
        "seconds": round(seconds, 3),
    }


def collective_record(
    shard_id: int,
    split: str,
    offset: int,
    data: ShardData,
    rank: int,
    device: str,
    seconds: float = 0.0,
) -> ShardRecord:
    """The manifest entry of a shard written to rows [offset, offset + n) of its split in the
    collective file (``bytes``: its data, uncompressed)."""
    return {
        "id": shard_id,
        "file": COLLECTIVE,
        "split": split,
        "offset": offset,
        "n_images": data.n_images,
        "bytes": sum(a.nbytes for _, a in data.datasets()),
        "content_sha256": content_sha256(data.datasets()),
        "rank": rank,
        "host": socket.gethostname(),
        "device": device,
        "seconds": round(seconds, 3),
    }


def add_times(record: ShardRecord, seconds: float, phases: Mapping[str, float]) -> ShardRecord:
    """Set ``record``'s seconds (the whole shard) and seconds per phase (``sample_s``,
    ``render_s``, ``write_s``: those in ``phases``), rounded to milliseconds; returns it."""
    record["seconds"] = round(seconds, 3)
    if "sample_s" in phases:
        record["sample_s"] = round(phases["sample_s"], 3)
    if "render_s" in phases:
        record["render_s"] = round(phases["render_s"], 3)
    if "write_s" in phases:
        record["write_s"] = round(phases["write_s"], 3)
    return record


def write_virtual_dataset(out_dir: Path, shards: list[ShardRecord], attrs: dict) -> Path:
    """dataset.h5 over the shards listed (records with id, file, split, n_images), written to
    a temporary name of its own and renamed (so writers that finish together may both write
    it: the bytes are the same): every dataset of the schema, in its dtype, with the shapes
    and units of the split's first shard. Source paths are relative to ``out_dir``."""
    out_dir = Path(out_dir)
    path = out_dir / DATASET
    tmp = private_tmp(path)
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
                    name: (first[name].shape[1:], np.dtype(SPECS[name].dtype))
                    for name in DATASET_NAMES
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
