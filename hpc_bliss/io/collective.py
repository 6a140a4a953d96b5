"""The collective output mode (``generate.io=mpio``): every rank writes its shards' rows into
ONE HDF5 file through MPI-IO, instead of one file per shard.

``<output_dir>/collective.h5`` has the layout of ``dataset.h5`` (see
:mod:`hpc_bliss.io.manifest`), with the data stored in it rather than referenced::

    /                     attrs: schema_version, config_hash, config_yaml, n_shards
    /{split}/images       float32 (N_split, B, H, W), attr units; shards in id order
    /{split}/background, /{split}/psf_params, /{split}/tile_catalog/{key}
    /{split}/shard_id     int64 (N_split,)  which shard each row comes from (-1: not written)
    /{split}/index_in_shard int64 (N_split,) (-1: not written)

It needs h5py built against parallel HDF5 (``h5py.get_config().mpi``); the wheels on PyPI are
serial, ``scripts/build_parallel_h5py.sh`` builds one. In parallel HDF5 every change to the
file's structure (creating datasets, writing attributes, closing) is collective: all ranks make
the same calls with the same arguments, so shapes come from the configuration
(:func:`layouts_for`) before any data exists. Each rank writes the rows of its own shards
(:meth:`CollectiveWriter.write_shard`) in lockstep rounds: in each round every rank writes
one shard, or nothing when it has none left.

Every dataset carries Fletcher-32 checksums, one image per chunk, as in shard files. Parallel
HDF5 (≥ 1.10.2) writes such filtered datasets only with collective writes, every rank in each
write call: so each round is one collective write per dataset, in which a rank without a shard
that round (or whose shard failed) takes part with an empty selection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.io.manifest import COLLECTIVE as COLLECTIVE  # the file's name, re-exported
from hpc_bliss.io.manifest import SPLITS, split_counts, split_of
from hpc_bliss.io.schema import DATASETS, SCHEMA_VERSION, SPECS, Dims, shape_of, storage
from hpc_bliss.io.shards import ShardData

#: dataset name → (shape after the image axis, dtype, units attribute)
Layouts = dict[str, tuple[tuple[int, ...], np.dtype, str]]

BUILD_COMMAND = (
    "CC=mpicc HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi pip install --no-binary=h5py "
    "--no-build-isolation --force-reinstall --no-deps h5py=={version}"
)


def parallel_h5py_available() -> bool:
    """Whether this h5py was built against parallel HDF5 (can open files with driver="mpio")."""
    return bool(h5py.get_config().mpi)


def require_parallel_h5py() -> None:
    """Raise :class:`ConfigError`, saying how to get one, unless h5py is parallel."""
    if parallel_h5py_available():
        return
    command = BUILD_COMMAND.format(version=h5py.__version__)
    raise ConfigError(
        "generate.io=mpio needs h5py built against parallel HDF5, but h5py.get_config().mpi is "
        f"False here (h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}: the PyPI "
        "wheels are serial). To build one into this virtual environment run "
        "scripts/build_parallel_h5py.sh (Debian/Ubuntu: it installs libhdf5-openmpi-dev, "
        "then compiles h5py, about 2 minutes), or, with a parallel HDF5 and mpi4py installed: "
        f"pip install Cython pkgconfig 'setuptools>=77' packaging numpy mpi4py wheel && {command}"
        ". The default generate.io=files (one HDF5 file per shard) works everywhere."
    )


def layouts_for(cfg: Any) -> Layouts:
    """The per-image shapes, dtypes and units of every dataset, from the configuration alone
    (B bands, H×W pixels, Ht×Wt tiles, M sources per tile: :class:`~hpc_bliss.io.schema.Dims`
    of ``cfg.prior``), so that all ranks agree on them before simulating anything."""
    dims = Dims.from_prior(cfg.prior)
    return {
        spec.name: (
            shape_of(spec, dims)[1:],
            np.dtype(spec.dtype),
            spec.units_for(cfg.render.units),
        )
        for spec in DATASETS
    }


def layouts_from(data: ShardData) -> Layouts:
    """The layouts of one simulated shard's datasets (to check :func:`layouts_for` against)."""
    return {
        name: (tuple(arr.shape[1:]), arr.dtype, SPECS[name].units_for(data.units))
        for name, arr in data.datasets()
    }


def split_sizes_for(n_shards: int, fractions: list[float], images_per_shard: int) -> dict:
    """Images per split (shards per split × images per shard)."""
    counts = split_counts(n_shards, list(fractions))
    return {s: counts[s] * images_per_shard for s in SPLITS}


def shard_offset(
    shard_id: int, n_shards: int, fractions: list[float], images_per_shard: int
) -> tuple[str, int]:
    """(split, first row) of a shard in its split's datasets: in a split the shards lie in id
    order, ``images_per_shard`` rows each."""
    counts = split_counts(n_shards, list(fractions))
    split = split_of(shard_id, n_shards, list(fractions))
    first = {"train": 0, "val": counts["train"], "test": counts["train"] + counts["val"]}[split]
    return split, (shard_id - first) * images_per_shard


def _collective_write(dset: h5py.Dataset, start: int, rows: np.ndarray | None) -> None:
    """Rows [start, start + len(rows)) of ``dset`` in a collective write; ``rows=None`` takes
    part with an empty selection (h5py's own indexing skips empty writes, which would leave
    the other ranks waiting)."""
    dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
    fspace = dset.id.get_space()
    if rows is None:
        fspace.select_none()
        rows = np.zeros((1, *dset.shape[1:]), dtype=dset.dtype)
        mspace = h5py.h5s.create_simple(rows.shape)
        mspace.select_none()
    else:
        fspace.select_hyperslab((start,) + (0,) * (dset.ndim - 1), rows.shape)
        mspace = h5py.h5s.create_simple(rows.shape)
    dset.id.write(mspace, fspace, rows, dxpl=dxpl)


class CollectiveWriter:
    """One HDF5 file written by all ranks of ``comm`` together (driver="mpio").

    The constructor, :meth:`close` (and leaving a ``with`` block) are collective: every rank
    calls them, with the same arguments, and :meth:`write_shard` too, once per round. The file is
    written as ``path.tmp`` and renamed to ``path`` by rank 0 when every rank closed it with
    ``ok=True``; otherwise the ``.tmp`` stays for inspection.

    ``comm=None`` writes the same file from a single process with the default (serial)
    driver, which any h5py can do.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        comm: Any,
        split_sizes: dict[str, int],
        layouts: Layouts,
        attrs: dict,
    ) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.split_sizes = {s: int(n) for s, n in split_sizes.items() if int(n) > 0}
        self.layouts = {name: (tuple(t), np.dtype(d), u) for name, (t, d, u) in layouts.items()}
        if comm is None:
            self.file = h5py.File(self.tmp_path, "w")
        else:
            require_parallel_h5py()
            self.file = h5py.File(self.tmp_path, "w", driver="mpio", comm=comm)
        try:
            for key, value in attrs.items():
                self.file.attrs[key] = value
            self.file.attrs["schema_version"] = SCHEMA_VERSION
            # datasets are created (collectively) once and kept open: writes use these handles
            self._dsets: dict[str, dict[str, h5py.Dataset]] = {}
            for split, n in self.split_sizes.items():
                self._dsets[split] = self._create(self.file.create_group(split), n)
        except BaseException:
            self.file.close()
            raise

    def _create(self, group: h5py.Group, n: int) -> dict[str, h5py.Dataset]:
        """A split's datasets of ``n`` rows (collective), one image per chunk, each chunk with
        its Fletcher-32 checksum."""
        dsets = {}
        for name, (tail, dtype, units) in self.layouts.items():
            keywords = storage(SPECS[name], (n, *tail), "none")
            dsets[name] = group.create_dataset(name, shape=(n, *tail), dtype=dtype, **keywords)
            dsets[name].attrs["units"] = units
        for name in ("shard_id", "index_in_shard"):
            dsets[name] = group.create_dataset(
                name, shape=(n,), dtype=np.int64, fillvalue=-1, chunks=True, fletcher32=True
            )
        return dsets

    def _problem(self, split: str, offset: int, shard_id: int, data: ShardData) -> str:
        """Why ``data`` does not fit rows [offset, offset + n) of ``split`` ("" if it does)."""
        n = data.n_images
        size = self.split_sizes.get(split, 0)
        if offset < 0 or offset + n > size:
            return (
                f"shard {shard_id}: rows [{offset}, {offset + n}) outside split {split!r} "
                f"of {size} images in {self.tmp_path}"
            )
        arrays = dict(data.datasets())
        if set(arrays) != set(self.layouts):
            return f"shard {shard_id}: datasets {sorted(arrays)} do not match the file"
        for name, arr in arrays.items():
            tail = self.layouts[name][0]
            if arr.shape != (n, *tail):
                return f"shard {shard_id}: {name} has shape {arr.shape}, expected {(n, *tail)}"
        return ""

    def write_shard(self, split: str, offset: int, shard_id: int, data: ShardData | None) -> None:
        """Write ``data`` to rows [offset, offset + n) of the split's datasets. Under MPI-IO
        this is one round: every rank calls it, ``data=None`` for a rank with no shard this
        round. A shard that does not fit the layouts raises :class:`ShardError`, after the
        round, with nothing of it written."""
        problem = self._problem(split, offset, shard_id, data) if data is not None else ""
        rows: dict[str, np.ndarray] = {}
        if data is not None and not problem:
            for name, arr in data.datasets():
                rows[name] = np.ascontiguousarray(arr, dtype=self.layouts[name][1])
            rows["shard_id"] = np.full(data.n_images, shard_id, dtype=np.int64)
            rows["index_in_shard"] = np.arange(data.n_images, dtype=np.int64)
        for s, dsets in self._dsets.items():
            for name, dset in dsets.items():
                mine = rows.get(name) if s == split else None
                if self.comm is None:
                    if mine is not None:
                        dset[offset : offset + len(mine)] = mine
                else:
                    _collective_write(dset, offset, mine)
        if problem:
            raise ShardError(problem)

    def close(self, ok: bool = True) -> Path | None:
        """Close the file on every rank (collective); when every rank passed ``ok``, rename
        it to :attr:`path` and return that, else return None."""
        if not self.file:
            return None
        self._dsets = {}
        self.file.close()
        all_ok = all(self.comm.allgather(bool(ok))) if self.comm is not None else bool(ok)
        error = None
        if all_ok and self.rank == 0:
            try:
                os.replace(self.tmp_path, self.path)
            except OSError as err:
                error = f"cannot rename {self.tmp_path} to {self.path}: {err}"
        if self.comm is not None:
            error = self.comm.bcast(error, root=0)  # every rank raises, none waits for rank 0
        if error:
            raise ShardError(error)
        return self.path if all_ok else None

    def __enter__(self) -> CollectiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
