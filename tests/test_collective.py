"""generate.io=mpio: the parallel-h5py check and the collective single-file writer."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.io.collective import (
    CollectiveWriter,
    layouts_for,
    layouts_from,
    parallel_h5py_available,
    require_parallel_h5py,
    shard_offset,
    split_sizes_for,
)
from hpc_bliss.io.manifest import shard_path, write_virtual_dataset
from hpc_bliss.io.schema import CATALOG_KEYS, SCHEMA_VERSION, shard_name
from hpc_bliss.io.shards import ShardData, write_shard
from tests.conftest import CONFIGS, ROOT
from tests.mpi_utils import MPI_ENV, PARALLEL_H5PY_HINT, mpirun

VENV_BIN = Path(sys.executable).parent

#: a tiny configuration: 2 bands, 4×6 pixels in 2×2 tiles, 2 sources per tile
CFG = SimpleNamespace(
    prior=SimpleNamespace(
        bands=["g", "r"], image_height=4, image_width=6, tile_slen=2, max_sources=2
    ),
    render=SimpleNamespace(units="nmgy"),
)
N_SHARDS, PER_SHARD, FRACTIONS = 4, 3, [0.5, 0.5, 0.0]  # shards 0, 1 train; 2, 3 val
ATTRS = {"config_hash": "0123456789abcdef", "config_yaml": "seed: 7\n" * 50, "n_shards": N_SHARDS}


def synthetic_shard(shard_id: int) -> ShardData:
    """Deterministic data of one shard, in the layouts of CFG."""
    rng = np.random.default_rng(1000 + shard_id)
    arrays = {
        name: (rng.random((PER_SHARD, *tail)) * 100).astype(dtype)
        for name, (tail, dtype, _) in layouts_for(CFG).items()
    }
    return ShardData(
        images=arrays["images"],
        background=arrays["background"],
        psf_params=arrays["psf_params"],
        catalog={k: arrays[f"tile_catalog/{k}"] for k in CATALOG_KEYS},
    )


def write_shards(path: Path, comm, shard_ids, rounds: int = 0) -> Path | None:
    """What the MPI driver does on each rank (and the serial test on one process): one round
    per shard, then empty rounds up to ``rounds`` (collective writes need every rank)."""
    sizes = split_sizes_for(N_SHARDS, FRACTIONS, PER_SHARD)
    with CollectiveWriter(path, comm, sizes, layouts_for(CFG), ATTRS) as writer:
        for sid in shard_ids:
            split, offset = shard_offset(sid, N_SHARDS, FRACTIONS, PER_SHARD)
            writer.write_shard(split, offset, sid, synthetic_shard(sid))
        for _ in range(len(shard_ids), rounds):
            writer.write_shard("", 0, -1, None)
    return path if path.exists() else None


def check_file(path: Path, written) -> None:
    """Every row of ``path`` holds the synthetic data of the shards ``written``; rows of the
    others have shard_id and index_in_shard -1."""
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        for key, value in ATTRS.items():
            got = f.attrs[key]
            assert (got.decode() if isinstance(got, bytes) else got) == value
        assert sorted(f) == ["train", "val"]  # no test shards: no test group
        layouts = layouts_for(CFG)
        for split in ("train", "val"):
            group = f[split]
            assert group["shard_id"].shape == (2 * PER_SHARD,)
            for name, (tail, dtype, units) in layouts.items():
                assert group[name].shape == (2 * PER_SHARD, *tail)
                assert group[name].dtype == dtype
                assert group[name].attrs["units"] == units
                assert group[name].fletcher32, (split, name)  # every chunk checksummed
        for sid in range(N_SHARDS):
            split, offset = shard_offset(sid, N_SHARDS, FRACTIONS, PER_SHARD)
            rows = slice(offset, offset + PER_SHARD)
            group = f[split]
            if sid not in written:
                assert (group["shard_id"][rows] == -1).all()
                assert (group["index_in_shard"][rows] == -1).all()
                continue
            assert (group["shard_id"][rows] == sid).all()
            assert group["index_in_shard"][rows].tolist() == list(range(PER_SHARD))
            for name, arr in synthetic_shard(sid).datasets():
                np.testing.assert_array_equal(group[name][rows], arr, err_msg=f"{sid} {name}")


def test_require_parallel_h5py():
    if parallel_h5py_available():
        require_parallel_h5py()  # h5py.get_config().mpi: nothing to say
        return
    with pytest.raises(ConfigError) as err:
        require_parallel_h5py()
    msg = str(err.value)
    for text in (
        "generate.io=mpio",
        "parallel HDF5",
        "h5py.get_config().mpi is False",
        "scripts/build_parallel_h5py.sh",
        "HDF5_MPI=ON",
        "generate.io=files",
    ):
        assert text in msg


def test_layouts_for_matches_a_simulated_shard():
    import torch

    from hpc_bliss.config import load_config
    from hpc_bliss.simulate.batch import make_renderer
    from hpc_bliss.stages.shard_writer import simulate_shard

    cfg = load_config(
        CONFIGS / "smoke.yaml", ["generate.images_per_shard=1", "generate.batch_size=1"]
    )
    data, _ = simulate_shard(cfg, 0, make_renderer(cfg, torch.device("cpu")))
    assert layouts_from(data) == layouts_for(cfg)


def test_offsets_follow_split_and_id_order():
    assert split_sizes_for(10, [0.8, 0.1, 0.1], 5) == {"train": 40, "val": 5, "test": 5}
    assert [shard_offset(s, 10, [0.8, 0.1, 0.1], 5) for s in (0, 3, 7, 8, 9)] == [
        ("train", 0),
        ("train", 15),
        ("train", 35),
        ("val", 0),
        ("test", 0),
    ]


def test_serial_writer_same_layout(tmp_path):
    """comm=None writes the same file with the serial driver (any h5py); shard 1 is left
    out, so its rows say -1."""
    path = tmp_path / "collective.h5"
    assert write_shards(path, None, [3, 0, 2]) == path
    assert not (tmp_path / "collective.h5.tmp").exists()
    check_file(path, written={0, 2, 3})


def _tree(f: h5py.File) -> dict:
    out = {}
    f.visititems(
        lambda name, obj: out.setdefault(name, obj) if isinstance(obj, h5py.Dataset) else None
    )
    return out


def test_same_layout_and_data_as_dataset_h5(tmp_path):
    """collective.h5 holds what dataset.h5 presents over the shard files of the same data."""
    (tmp_path / "shards").mkdir()
    records = []
    for sid in range(N_SHARDS):
        split, _ = shard_offset(sid, N_SHARDS, FRACTIONS, PER_SHARD)
        write_shard(shard_path(tmp_path, sid), synthetic_shard(sid), {"shard_id": sid})
        records.append(
            {"id": sid, "file": f"shards/{shard_name(sid)}", "split": split, "n_images": PER_SHARD}
        )
    virtual = write_virtual_dataset(tmp_path, records, ATTRS)
    collective = write_shards(tmp_path / "collective.h5", None, range(N_SHARDS))
    with h5py.File(virtual, "r") as fv, h5py.File(collective, "r") as fc:
        assert dict(fv.attrs) == dict(fc.attrs)
        tv, tc = _tree(fv), _tree(fc)
        assert sorted(tv) == sorted(tc)
        for name, dv in tv.items():
            dc = tc[name]
            assert (dv.shape, dv.dtype) == (dc.shape, dc.dtype), name
            assert dict(dv.attrs) == dict(dc.attrs), name
            np.testing.assert_array_equal(dv[()], dc[()], err_msg=name)


def test_writer_rejects_rows_outside_the_split(tmp_path):
    sizes = split_sizes_for(N_SHARDS, FRACTIONS, PER_SHARD)
    writer = CollectiveWriter(tmp_path / "c.h5", None, sizes, layouts_for(CFG), ATTRS)
    with pytest.raises(ShardError, match="outside split"):
        writer.write_shard("val", PER_SHARD + 1, 3, synthetic_shard(3))
    with pytest.raises(ShardError, match="outside split"):
        writer.write_shard("test", 0, 3, synthetic_shard(3))
    assert writer.close(ok=False) is None
    assert not (tmp_path / "c.h5").exists() and (tmp_path / "c.h5.tmp").exists()


DRIVER = """\
import sys
from pathlib import Path

from mpi4py import MPI

from tests.test_collective import N_SHARDS, write_shards

comm = MPI.COMM_WORLD
mine = [0, 2, 3] if comm.rank == 0 else [1]  # uneven: rank 1 sits out two rounds
write_shards(Path(sys.argv[1]), comm, mine, rounds=3)
print(f"rank {comm.rank}/{comm.size} wrote shards {mine}", flush=True)
"""


@pytest.mark.mpi
@pytest.mark.skipif(
    not parallel_h5py_available(),
    reason=PARALLEL_H5PY_HINT,
)
def test_two_ranks_write_one_file(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    path = tmp_path / "collective.h5"
    cmd = [*mpirun(2), str(VENV_BIN / "python"), str(driver), str(path)]
    res = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rank 0/2 wrote shards [0, 2, 3]" in res.stdout
    assert "rank 1/2 wrote shards [1]" in res.stdout
    assert not (tmp_path / "collective.h5.tmp").exists()
    check_file(path, written=set(range(N_SHARDS)))
