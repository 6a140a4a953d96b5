"""hpc-bliss generate: shards, manifest, dataset.h5, reruns, faults and bad input."""

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_bliss.config import load_config
from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.io import shards as shards_mod
from hpc_bliss.io.manifest import split_counts, split_of
from hpc_bliss.io.schema import CATALOG_DTYPES, DATASET_NAMES
from hpc_bliss.io.shards import validate_shard
from hpc_bliss.stages.generate import generate
from tests.conftest import CONFIGS, ROOT
from tests.mpi_utils import MPI_ENV, PARALLEL_H5PY_HINT, mpirun

VENV_BIN = Path(sys.executable).parent


def _cfg(out, *extra):
    return load_config(CONFIGS / "smoke.yaml", [f"generate.output_dir={out}", *extra])


def _run(out, *extra, quiet=True):
    return generate(_cfg(out, *extra), log=(lambda s: None) if quiet else print)


def _manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def _hashes(out):
    return {s["id"]: s["content_sha256"] for s in _manifest(out)["shards"]}


def _datasets(path):
    with h5py.File(path, "r") as f:
        return {n: f[n][()] for n in DATASET_NAMES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert _run(out) == 0
    return out


def test_shards_follow_the_contract(reference):
    m = _manifest(reference)
    assert m["missing"] == [] and m["failures"] == []
    assert m["splits"] == {"train": [0, 1], "val": [2], "test": [3]}
    path = reference / "shards" / "shard-000000.h5"
    assert validate_shard(path, m["config_hash"]) == []
    with h5py.File(path, "r") as f:
        for key in (
            "schema_version",
            "hpc_bliss_version",
            "shard_id",
            "split",
            "seed",
            "n_images",
            "config_yaml",
            "config_hash",
            "created_utc",
            "host",
            "rank",
            "device",
        ):
            assert key in f.attrs, key
        assert f["images"].shape == (8, 5, 40, 40) and f["images"].chunks == (1, 5, 40, 40)
        assert f["tile_catalog/n_sources"].dtype == np.uint8
        assert f["tile_catalog/locs"].shape == (8, 20, 20, 3, 2)
        assert f["tile_catalog/shear"].shape == (8, 20, 20, 2)
        for name in ("images", "tile_catalog/star_fluxes", "tile_catalog/galaxy_params"):
            assert f[name].attrs["units"]
    assert not list((reference / "shards").glob("*.tmp"))


def test_dataset_h5_presents_each_split(reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # virtual sources resolve relative to dataset.h5, not the cwd
    with h5py.File(reference / "dataset.h5", "r") as f:
        assert f["train/images"].shape == (16, 5, 40, 40)
        assert f["test/tile_catalog/n_sources"].shape == (8, 20, 20)
        np.testing.assert_array_equal(f["train/shard_id"][()], [0] * 8 + [1] * 8)
        shard1 = _datasets(reference / "shards" / "shard-000001.h5")
        np.testing.assert_array_equal(f["train/images"][8:], shard1["images"])


def test_split_is_a_function_of_shard_id_alone():
    assert split_counts(20, [0.8, 0.1, 0.1]) == {"train": 16, "val": 2, "test": 2}
    assert [split_of(i, 4, [0.8, 0.1, 0.1]) for i in range(4)] == ["train", "train", "val", "test"]
    with pytest.raises(ConfigError, match="generate.n_shards"):
        split_counts(2, [0.8, 0.1, 0.1])


def test_rerun_skips_valid_shards_and_discards_tmp(reference, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5")}
    (out / "shards" / "shard-000002.h5.tmp").write_bytes(b"half-written")
    logs = []
    assert generate(_cfg(out), log=logs.append) == 0
    assert sum("skipped" in line for line in logs) == 4
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5")}
    assert not list((out / "shards").glob("*.tmp"))
    assert generate(_cfg(out), overwrite=True, log=logs.append) == 0
    assert all(before[p.name] != p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5"))
    assert _hashes(out) == _hashes(reference)


def test_corrupt_shard_is_regenerated(reference, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    with h5py.File(out / "shards" / "shard-000001.h5", "r+") as f:
        f["images"][0, 0, 0, 0] += 1.0
    assert validate_shard(out / "shards" / "shard-000001.h5")  # detected
    assert _run(out) == 0
    assert _hashes(out) == _hashes(reference)
    assert validate_shard(out / "shards" / "shard-000001.h5") == []


def test_other_config_is_refused_naming_both_hashes(reference, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    old = _manifest(out)["config_hash"]
    cfg = _cfg(out, "seed=99")
    with pytest.raises(ConfigError) as err:
        generate(cfg, log=lambda s: None)
    new = err.value.args[0]
    assert old in new and "--overwrite" in new
    assert _hashes(out) == _hashes(reference)  # nothing touched
    assert generate(cfg, overwrite=True, log=lambda s: None) == 0
    assert _manifest(out)["config_hash"] != old


def test_failing_shard_is_reported_and_others_finish(tmp_path):
    out = tmp_path / "data"
    (out / "shards" / "shard-000001.h5").mkdir(parents=True)  # the rename onto it will fail
    logs = []
    assert generate(_cfg(out), log=logs.append) == 1
    m = _manifest(out)
    assert m["missing"] == [1]
    assert m["failures"][0]["id"] == 1 and "shard-000001.h5" in m["failures"][0]["error"]
    assert sorted(_hashes(out)) == [0, 2, 3]
    assert any("shard 000001 FAILED" in line for line in logs)
    assert not list((out / "shards").glob("*.tmp"))


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ShardError, match="generate.output_dir"):
        _run(blocker / "data")


def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch):
    data = shards_mod.ShardData(
        images=np.zeros((2, 1, 4, 4), np.float32),
        background=np.zeros((2, 1), np.float32),
        psf_params=np.zeros((2, 1, 6), np.float32),
        catalog={k: np.zeros((2, 2, 2, 1, 1), np.dtype(d)) for k, d in CATALOG_DTYPES.items()},
    )
    real_file = h5py.File

    class FullDisk(real_file):
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards_mod.h5py, "File", FullDisk)
    with pytest.raises(ShardError, match="disk full") as err:
        shards_mod.write_shard(tmp_path / "shard-000000.h5", data, {})
    assert "shard-000000.h5" in str(err.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "data"
    cmd = [
        str(VENV_BIN / "hpc-bliss"),
        "generate",
        str(CONFIGS / "smoke.yaml"),
        f"generate.output_dir={out}",
        "generate.images_per_shard=64",
        "generate.n_shards=6",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "shards").glob("shard-*.h5")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = list((out / "shards").glob("shard-*.h5"))
    assert 1 <= len(written) < 6, "the kill should land mid-way"
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    full = tmp_path / "full"
    assert (
        subprocess.run(
            [*cmd[:-3], f"generate.output_dir={full}", *cmd[-2:]], cwd=ROOT, capture_output=True
        ).returncode
        == 0
    )
    assert _hashes(out) == _hashes(full)
    for sid in range(6):
        a = _datasets(out / "shards" / f"shard-{sid:06d}.h5")
        b = _datasets(full / "shards" / f"shard-{sid:06d}.h5")
        for name in a:
            assert a[name].tobytes() == b[name].tobytes(), (sid, name)


def _mpirun_generate(out, *extra):
    cmd = [*mpirun(2), str(VENV_BIN / "python"), "-m", "hpc_bliss", "generate"]
    cmd += [str(CONFIGS / "smoke.yaml"), f"generate.output_dir={out}", *extra]
    res = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.mpi
def test_two_ranks_write_the_same_shards_as_one(reference, tmp_path):
    out = tmp_path / "data"
    res = _mpirun_generate(out)
    m = _manifest(out)
    assert {s["rank"] for s in m["shards"]} == {0, 1} and m["ranks"] == 2
    assert _hashes(out) == _hashes(reference)
    assert "images/s" in res.stdout


@pytest.mark.mpi
def test_mpio_writes_one_collective_file_equal_to_the_shards(reference, tmp_path):
    from hpc_bliss.io.collective import parallel_h5py_available

    if not parallel_h5py_available():
        pytest.skip(PARALLEL_H5PY_HINT)
    out = tmp_path / "data"
    _mpirun_generate(out, "generate.io=mpio")
    assert _hashes(out) == _hashes(reference)
    with h5py.File(out / "collective.h5", "r") as mine, h5py.File(reference / "dataset.h5") as ref:
        assert mine.attrs["config_hash"] == ref.attrs["config_hash"]
        assert mine["train/images"].fletcher32 and mine["test/shard_id"].fletcher32
        for split in ("train", "val", "test"):
            for name in (*DATASET_NAMES, "shard_id", "index_in_shard"):
                np.testing.assert_array_equal(
                    mine[f"{split}/{name}"][()], ref[f"{split}/{name}"][()]
                )
