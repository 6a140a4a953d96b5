"""The shard schema (hpc_bliss.io.schema): frozen against shards written before it existed, the
README's tables, the galaxy-parameter table, the one manifest reader and writer, and the
reader's lazy fork hook."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from hpc_bliss.errors import ShardError
from hpc_bliss.io import schema
from hpc_bliss.io.collective import layouts_for
from hpc_bliss.io.manifest import (
    COLLECTIVE,
    MANIFEST,
    add_times,
    collective_record,
    make_manifest,
    read_manifest,
    shard_file_record,
    write_manifest,
)
from hpc_bliss.io.schema import (
    DATASET_NAMES,
    DATASETS,
    GALAXY_PARAMS,
    SCHEMA_VERSION,
    SPECS,
    Dims,
    content_sha256,
    shape_of,
)
from hpc_bliss.io.shards import ShardData, read_attrs, validate_shard, write_shard
from tests.conftest import ROOT, script_output

#: 2 bands, 4×6 pixels in 2×3 tiles of 2 px, 2 sources per tile
CFG = SimpleNamespace(
    prior=SimpleNamespace(
        bands=["g", "r"], image_height=4, image_width=6, tile_slen=2, max_sources=2
    ),
    render=SimpleNamespace(units="nmgy"),
)

#: what schema version 1 shards held before hpc_bliss.io.schema existed: per-image shape,
#: dtype and units attribute of every dataset, in hash order, for CFG
FROZEN_LAYOUTS = {
    "images": ((2, 4, 6), "float32", "nanomaggies per pixel, sky-subtracted"),
    "background": ((2,), "float32", "nanomaggies per pixel, sky-subtracted"),
    "psf_params": ((2, 6), "float32", "sigma1, sigma2 (px), b, sigmap (px), beta, p0"),
    "tile_catalog/n_sources": ((2, 3), "uint8", "count of sources in the tile"),
    "tile_catalog/locs": (
        (2, 3, 2, 2),
        "float32",
        "(row, col) within the tile, fraction of tile_slen in [0, 1)",
    ),
    "tile_catalog/source_type": ((2, 3, 2, 1), "uint8", "0 star, 1 galaxy"),
    "tile_catalog/star_fluxes": ((2, 3, 2, 2), "float32", "nanomaggies per band"),
    "tile_catalog/galaxy_fluxes": ((2, 3, 2, 2), "float32", "nanomaggies per band"),
    "tile_catalog/galaxy_params": (
        (2, 3, 2, 6),
        "float32",
        "disk_frac, beta_radians (rad), disk_q, a_d (arcsec), bulge_q, a_b (arcsec)",
    ),
    "tile_catalog/shear": (
        (2, 3, 2),
        "float32",
        "reduced-shear inputs gamma1, gamma2 (dimensionless)",
    ),
    "tile_catalog/convergence": ((2, 3, 1), "float32", "kappa (dimensionless)"),
}
#: content_sha256 of :func:`_arrays` as computed before the schema module existed
FROZEN_SHA256 = "41276c51eb78b579d2346b01a9f5904998349dba17d997c1c6f6227bd397ec3d"
FROZEN_REQUIRED_ATTRS = (
    "schema_version",
    "hpc_bliss_version",
    "shard_id",
    "split",
    "seed",
    "n_images",
    "config_yaml",
    "config_hash",
    "content_sha256",
    "created_utc",
    "host",
    "rank",
    "device",
)


def _arrays(n: int = 3) -> list[tuple[str, np.ndarray]]:
    """Deterministic data for every dataset of CFG, in hash order."""
    dims = Dims.from_prior(CFG.prior, n)
    out = []
    for spec in DATASETS:
        shape = shape_of(spec, dims)
        values = np.arange(math.prod(shape)) % 7
        out.append((spec.name, values.reshape(shape).astype(spec.dtype)))
    return out


def _shard_data(n: int = 3) -> ShardData:
    arrays = dict(_arrays(n))
    return ShardData(
        images=arrays["images"],
        background=arrays["background"],
        psf_params=arrays["psf_params"],
        catalog={k: arrays[f"tile_catalog/{k}"] for k in schema.CATALOG_KEYS},
    )


def test_schema_is_what_version_1_shards_hold():
    assert SCHEMA_VERSION == 1
    assert schema.REQUIRED_ATTRS == FROZEN_REQUIRED_ATTRS
    assert DATASET_NAMES == tuple(FROZEN_LAYOUTS)
    got = {
        name: (tail, str(dtype), units) for name, (tail, dtype, units) in layouts_for(CFG).items()
    }
    assert got == FROZEN_LAYOUTS
    assert content_sha256(_arrays()) == FROZEN_SHA256
    units = {u: SPECS["images"].units_for(u) for u in ("nmgy", "nmgy_sky", "electrons", "x")}
    assert units == {
        "nmgy": "nanomaggies per pixel, sky-subtracted",
        "nmgy_sky": "nanomaggies per pixel",
        "electrons": "electrons per pixel",
        "x": "electrons per pixel",
    }


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_written_shard_follows_the_schema(tmp_path, compression):
    path = tmp_path / "shard-000000.h5"
    attrs = {"shard_id": 0, "split": "train", "seed": 7, "config_yaml": "seed: 7\n"}
    attrs |= {"config_hash": "abc", "rank": 0, "device": "cpu"}
    meta = write_shard(path, _shard_data(), attrs, compression)
    assert meta["content_sha256"] == FROZEN_SHA256
    assert validate_shard(path, "abc") == []
    assert set(read_attrs(path)) == set(FROZEN_REQUIRED_ATTRS)
    with h5py.File(path, "r") as f:
        for spec in DATASETS:
            dset = f[spec.name]
            tail, dtype, units = FROZEN_LAYOUTS[spec.name]
            assert (dset.shape[1:], str(dset.dtype), dset.attrs["units"]) == (tail, dtype, units)
            assert dset.chunks == (1, *tail) and dset.fletcher32  # every chunk checksummed
            packed = compression == "gzip" and spec.name.startswith("tile_catalog/")
            assert (dset.compression, dset.compression_opts) == (
                ("gzip", 1) if packed else (None, None)
            )


def test_validate_names_a_wrong_dtype(tmp_path):
    path = tmp_path / "shard-000000.h5"
    write_shard(path, _shard_data(), {k: 0 for k in ("shard_id", "rank", "seed")})
    with h5py.File(path, "r+") as f:
        for key in ("split", "config_yaml", "config_hash", "device"):
            f.attrs[key] = "x"
        data = f["tile_catalog/n_sources"][()]
        del f["tile_catalog/n_sources"]
        f["tile_catalog/n_sources"] = data.astype(np.int16)
    problems = validate_shard(path)
    assert problems and "tile_catalog/n_sources has dtype int16, expected uint8" in problems[0]


def test_readme_tables_are_the_script_output():
    out = script_output("schema_reference.py")
    readme = (ROOT / "README.md").read_text()
    assert f"### The HDF5 shard schema (version {SCHEMA_VERSION})" in readme
    assert out.strip() and out in readme


def test_galaxy_param_table():
    names = ("disk_frac", "beta_radians", "disk_q", "a_d", "bulge_q", "a_b")
    assert GALAXY_PARAMS.names == names and schema.N_GALAXY_PARAMS == 6
    assert [GALAXY_PARAMS.index(n) for n in names] == list(range(6))
    assert GALAXY_PARAMS["beta_radians"].upper == math.pi and GALAXY_PARAMS["a_b"].unit == "arcsec"
    assert GALAXY_PARAMS.by_name([0, 1, 2, 3, 4, 5])["a_d"] == 3
    with pytest.raises(KeyError, match="no galaxy parameter 'size'"):
        GALAXY_PARAMS.index("size")
    with pytest.raises(ValueError):
        GALAXY_PARAMS.by_name([1.0, 2.0])
    from hpc_bliss.model.variational import _GAL_UPPER

    assert _GAL_UPPER == (1.0, math.pi, 1.0, 0.0, 1.0, 0.0)


def test_prior_draws_inside_the_table_bounds():
    from hpc_bliss.config import load_config
    from hpc_bliss.simulate.prior import sample_prior

    cfg = load_config(ROOT / "configs" / "galaxies.yaml")
    cat = sample_prior(cfg.prior, 4, torch.Generator().manual_seed(0))
    gal = cat["galaxy_params"][cat["source_type"][..., 0] == 1]
    assert gal.shape[0] > 0
    for i, p in enumerate(GALAXY_PARAMS):
        assert (gal[:, i] >= p.lower).all() and (gal[:, i] <= p.upper).all(), p.name


def _record(sid: int, split: str) -> schema.ShardRecord:
    return {
        "id": sid,
        "file": f"shards/shard-{sid:06d}.h5",
        "split": split,
        "n_images": 8,
        "bytes": 100,
        "content_sha256": "0" * 64,
        "rank": 0,
        "host": "h",
        "device": "cpu",
        "seconds": 0.5,
    }


def test_manifest_written_and_read(tmp_path):
    records = [_record(2, "val"), _record(0, "train")]
    failures: list[schema.ShardFailure] = [{"id": 1, "rank": 1, "error": "boom"}]
    manifest = make_manifest("abc", "seed: 7\n", 4, 8, records, failures, ranks=2, io="files")
    assert list(manifest) == [
        "schema_version",
        "config_hash",
        "config_yaml",
        "n_shards",
        "images_per_shard",
        "splits",
        "images",
        "shards",
        "missing",
        "failures",
        "ranks",
        "io",
    ]
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["splits"] == {"train": [0], "val": [2], "test": []}
    assert manifest["images"] == {"train": 8, "val": 8, "test": 0}
    assert [r["id"] for r in manifest["shards"]] == [0, 2] and manifest["missing"] == [1, 3]
    assert write_manifest(tmp_path, manifest) == tmp_path / MANIFEST
    assert read_manifest(tmp_path) == json.loads(json.dumps(manifest))


def test_shard_records(tmp_path):
    path = tmp_path / "shard-000003.h5"
    attrs = {"shard_id": 3, "split": "test", "seed": 7, "config_yaml": "", "config_hash": "a"}
    meta = write_shard(path, _shard_data(), {**attrs, "rank": 1, "device": "cpu"})
    record = shard_file_record(path, meta)
    assert record == {
        "id": 3,
        "file": "shards/shard-000003.h5",
        "split": "test",
        "n_images": 3,
        "bytes": path.stat().st_size,
        "content_sha256": FROZEN_SHA256,
        "rank": 1,
        "host": meta["host"],
        "device": "cpu",
        "seconds": 0.0,
    }
    assert shard_file_record(path, read_attrs(path)) == record
    data = _shard_data()
    row = collective_record(3, "test", 6, data, 1, "cuda:0")
    assert list(row) == [
        *("id", "file", "split", "offset", "n_images", "bytes", "content_sha256"),
        *("rank", "host", "device", "seconds"),
    ]
    assert (row["file"], row["offset"], row["content_sha256"]) == (COLLECTIVE, 6, FROZEN_SHA256)
    assert row["bytes"] == sum(a.nbytes for _, a in data.datasets())
    phases = {"sample_s": 0.12345, "render_s": 1.0, "write_s": 0.5}
    add_times(row, 2.00049, phases)
    assert list(row)[-4:] == ["seconds", "sample_s", "render_s", "write_s"]
    assert (row["seconds"], row["sample_s"]) == (2.0, 0.123)


def test_manifest_reader_errors_name_the_file(tmp_path):
    with pytest.raises(ShardError, match=rf"{tmp_path / MANIFEST} not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path)


def test_reader_registers_its_fork_hook_on_first_use():
    code = """
import os
calls = []
real = os.register_at_fork
os.register_at_fork = lambda **kw: (calls.append(kw), real(**kw))[1]
import hpc_bliss.io.reader as r
mine = lambda: [c for c in calls if c.get("before") is r._close_before_fork]
assert not mine(), "registered at import"
r._Handles(); r._Handles()
assert len(mine()) == 1, calls
"""
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
