"""Reading generated data, one image at a time: a map-style (torch) dataset over the shards of
a split, for analysis scripts and the training DataLoader.

    with ShardDataset("runs/smoke/data", "train") as ds:
        item, cat = ds[3], ds.catalog(slice(0, 8))  # dict of tensors; TileCatalog of 0..7

Items are :class:`~hpc_bliss.io.schema.ShardItem` dicts. HDF5 files are opened lazily by the
process that reads them and never cross a fork: they are closed in the parent just before any
``os.fork`` (DataLoader workers included; the hook is installed when the first dataset is made,
not at import) and re-opened on first use in each process; pickling (spawn) drops them too.

Every read is checked: HDF5 verifies each chunk's Fletcher-32 checksum, and a damaged chunk
raises a one-line :class:`~hpc_bliss.errors.ShardError` naming the file, dataset and row
(:mod:`hpc_bliss.io.integrity`); shards written before the checksums read unchecked.
"""

from __future__ import annotations

import bisect
import copy
import os
import weakref
from collections.abc import Collection, Sequence
from operator import itemgetter
from pathlib import Path

import h5py
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.errors import ShardError
from hpc_bliss.io.integrity import read_row
from hpc_bliss.io.manifest import DATASET, MANIFEST, SPLITS, read_manifest
from hpc_bliss.io.schema import CATALOG_DTYPES, IMAGE_KEYS, ShardItem
from hpc_bliss.io.shards import read_attrs

#: catalog keys held as int64 in memory (an integer dtype on disk); float32 for the rest
INT_KEYS = tuple(k for k, dtype in CATALOG_DTYPES.items() if np.dtype(dtype).kind in "iu")


class _Handles:
    """Read-only h5py files keyed by path, owned by the process that opened them."""

    def __init__(self) -> None:
        self.files: dict[Path, h5py.File] = {}
        self.pid = os.getpid()
        _install_fork_hook()

    def get(self, path: Path) -> tuple[h5py.File, bool]:
        """The open file at ``path`` and whether it was opened just now."""
        if self.pid != os.getpid():  # inherited across a fork: never reuse the parent's handles
            self.files, self.pid = {}, os.getpid()
        f = self.files.get(path)
        if f is not None and f.id.valid:
            return f, False
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise ShardError(f"{path}: cannot open ({err})") from err
        self.files[path] = f
        _OPEN.add(self)
        return f, True

    def close(self) -> None:
        files, self.files = self.files, {}
        if self.pid == os.getpid():
            for f in files.values():
                f.close()


_OPEN: weakref.WeakSet[_Handles] = weakref.WeakSet()
_FORK_HOOK = False  #: whether _close_before_fork is registered (once, by the first _Handles)


def _close_before_fork() -> None:
    for handles in list(_OPEN):
        handles.close()


def _install_fork_hook() -> None:
    """Close every open handle before any fork: registered once, on first use."""
    global _FORK_HOOK
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_close_before_fork)
    _FORK_HOOK = True


def tile_slen_of(config_yaml: str) -> int:
    """``prior.tile_slen`` of a run's resolved configuration (a shard's ``config_yaml``)."""
    return int(OmegaConf.create(config_yaml).prior.tile_slen)


def to_tile_catalog(items: ShardItem | Sequence[ShardItem], tile_slen: int) -> TileCatalog:
    """Batched :class:`TileCatalog` of items: a list of items, one item, or a collated batch."""
    if isinstance(items, dict):
        cat = items["tile_catalog"]
        if cat["n_sources"].dim() == 2:  # one item: add the batch dimension
            cat = {k: v.unsqueeze(0) for k, v in cat.items()}
    else:
        if not items:
            raise ValueError("to_tile_catalog needs at least one item")
        keys = items[0]["tile_catalog"]
        cat = {k: torch.stack([it["tile_catalog"][k] for it in items]) for k in keys}
    return TileCatalog(tile_slen, dict(cat))


def _read_row(
    path: Path, group: h5py.Group, row: int, shard_id: int, index_in_shard: int
) -> ShardItem:
    """One image's arrays from ``group`` (a shard file or a split of dataset.h5), as tensors.
    HDF5 checks each chunk's Fletcher-32 checksum as it reads; a damaged one (or any failed
    read) raises a one-line :class:`ShardError` naming the file, the dataset and the row."""
    arrays = {
        k: torch.from_numpy(read_row(path, group, k, row).astype(np.float32, copy=False))
        for k in IMAGE_KEYS
    }
    cat = {}
    for key in CATALOG_DTYPES:
        a = read_row(path, group, f"tile_catalog/{key}", row)
        cat[key] = torch.from_numpy(
            a.astype(np.int64 if key in INT_KEYS else np.float32, copy=False)
        )
    return {
        "images": arrays["images"],
        "background": arrays["background"],
        "psf_params": arrays["psf_params"],
        "tile_catalog": cat,
        "shard_id": shard_id,
        "index_in_shard": index_in_shard,
    }


def _is_many(index) -> bool:
    """Whether ``index`` picks several images (slice, sequence, 1-d array) rather than one."""
    if isinstance(index, slice):
        return True
    return isinstance(index, Sequence | np.ndarray | Tensor) and len(np.shape(index)) > 0


class _RowDataset(Dataset):
    """Shared behaviour: global rows (a view may hold a subset), indexing, views, closing."""

    # set by the subclass before __init__; it defines _item
    split: str
    n_total: int  #: images in the split
    tile_slen: int
    config_yaml: str
    config_hash: str
    shard_ids: list[int]

    def __init__(self) -> None:
        self._handles = _Handles()
        self._rows = np.arange(self.n_total, dtype=np.int64)

    def _item(self, row: int) -> ShardItem:
        """Image ``row`` of the whole split (not of a view)."""
        raise NotImplementedError

    @property
    def bands(self) -> list[str]:
        return list(OmegaConf.create(self.config_yaml).prior.bands)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        """Item ``index`` (a dict, see :class:`ShardDataset`); a slice, a sequence of ints or
        an int array/tensor gives a view (:meth:`select`) instead."""
        if _is_many(index):
            return self.select(index)
        n, i = len(self._rows), int(index)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        return self._item(int(self._rows[i]))

    def select(self, indices) -> _RowDataset:
        """A view of the images ``indices`` (slice, ints, bool mask) of this dataset; it shares
        the open files (closing either closes both)."""
        if isinstance(indices, Tensor):
            indices = indices.cpu().numpy()
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            indices = indices if indices.size else indices.astype(np.int64)
        view = copy.copy(self)
        view._rows = np.atleast_1d(self._rows[indices]).astype(np.int64)
        return view

    def catalog(self, index) -> TileCatalog:
        """Batched TileCatalog of image ``index`` (batch of 1) or of a slice / list of images."""
        view = self.select(index if _is_many(index) else [int(index)])
        return to_tile_catalog([self._item(int(r)) for r in view._rows], self.tile_slen)

    def to_tile_catalog(self, items: ShardItem | Sequence[ShardItem]) -> TileCatalog:
        return to_tile_catalog(items, self.tile_slen)

    def __repr__(self) -> str:
        where, n_shards = getattr(self, "data_dir", getattr(self, "path", "?")), len(self.shard_ids)
        return (
            f"{type(self).__name__}({str(where)!r}, split={self.split!r}, shards={n_shards}, "
            f"images={len(self)} of {self.n_total})"
        )

    def close(self) -> None:
        self._handles.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # spawn / pickling: no open handles travel
        state = self.__dict__.copy()
        state["_handles"] = _Handles()
        return state


class ShardDataset(_RowDataset):
    """The images of one split, read from the shard files listed in ``data_dir/manifest.json``
    (shards in id order, rows in file order).

    ``ds[i]`` is a dict: ``images`` float32 (B, H, W), ``background`` float32 (B,),
    ``psf_params`` float32 (B, 6), ``tile_catalog`` {key: tensor} with ``n_sources`` int64
    (Ht, Wt), ``source_type`` int64 (Ht, Wt, M, 1) and float32 for the rest, ``shard_id`` and
    ``index_in_shard`` (ints). Raises :class:`ShardError` naming the file for a missing
    manifest, an unknown or empty split, a missing or unreadable shard, and a chunk that
    fails its Fletcher-32 checksum. The shards ``exclude`` (ids) are left out.
    """

    def __init__(
        self, data_dir: str | Path, split: str = "train", exclude: Collection[int] = ()
    ) -> None:
        self.data_dir, self.split = Path(data_dir), split
        manifest = read_manifest(self.data_dir)
        where = self.data_dir / MANIFEST
        if split not in SPLITS:
            raise ShardError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        records = sorted(
            (r for r in manifest["shards"] if r["split"] == split and r["id"] not in exclude),
            key=itemgetter("id"),
        )
        if not sum(r["n_images"] for r in records):
            left = f" once shards {sorted(exclude)} are left out" if exclude else ""
            raise ShardError(f"{where}: split {split!r} has no images{left}")
        self.paths = [self.data_dir / r["file"] for r in records]
        for path in self.paths:
            if not path.is_file():
                raise ShardError(f"{path}: shard file listed in {where} is missing")
        self.shard_ids, self.counts = [r["id"] for r in records], [r["n_images"] for r in records]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).tolist()
        self.n_total = self.starts[-1]
        attrs = read_attrs(self.paths[0])
        self.config_yaml, self.config_hash = attrs["config_yaml"], attrs["config_hash"]
        self.tile_slen = tile_slen_of(self.config_yaml)
        super().__init__()

    def _where(self, row: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.starts, row) - 1
        return k, row - self.starts[k]

    def locate(self, i: int) -> tuple[Path, int]:
        """(shard file, row in it) of image ``i`` of this dataset (or view)."""
        k, local = self._where(int(self._rows[i]))
        return self.paths[k], local

    def _item(self, row: int) -> ShardItem:
        k, local = self._where(row)
        path = self.paths[k]
        f, fresh = self._handles.get(path)
        if fresh and f["images"].shape[0] < self.counts[k]:
            n = f["images"].shape[0]
            raise ShardError(f"{path}: {n} images, the manifest lists {self.counts[k]}")
        return _read_row(path, f, local, self.shard_ids[k], local)


class VirtualDataset(_RowDataset):
    """The same items as :class:`ShardDataset`, read through dataset.h5's virtual datasets."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        self.path, self.split = Path(path), split
        if split not in SPLITS:
            raise ShardError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        try:
            with h5py.File(self.path, "r") as f:
                if split not in f:
                    raise ShardError(f"{self.path}: split {split!r} has no images")
                self.shard_id = f[split]["shard_id"][()]
                self.index_in_shard = f[split]["index_in_shard"][()]
                self.shard_ids = sorted({int(i) for i in self.shard_id})
                self.n_total = len(self.shard_id)
                sources = {s.file_name for s in f[split]["images"].virtual_sources()}
                self.config_yaml = str(f.attrs["config_yaml"])
                self.config_hash = str(f.attrs["config_hash"])
        except OSError as err:
            raise ShardError(f"{self.path}: cannot open ({err})") from err
        for name in sorted(sources):  # a missing source would silently read as zeros
            if not (self.path.parent / name).is_file():
                raise ShardError(f"{self.path.parent / name}: shard file of {self.path} is missing")
        self.tile_slen = tile_slen_of(self.config_yaml)
        super().__init__()

    def _item(self, row: int) -> ShardItem:
        f, _ = self._handles.get(self.path)
        shard_id, index = int(self.shard_id[row]), int(self.index_in_shard[row])
        return _read_row(self.path, f[self.split], row, shard_id, index)


def open_dataset(path: str | Path, split: str = "train") -> ShardDataset | VirtualDataset:
    """A generate.output_dir (read from its shards) or a dataset.h5 file (read through it)."""
    path = Path(path)
    if path.is_dir():
        return ShardDataset(path, split)
    if path.is_file():
        return VirtualDataset(path, split)
    raise ShardError(f"{path}: no such directory or {DATASET} file")
