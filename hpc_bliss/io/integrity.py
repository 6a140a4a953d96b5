"""Integrity of shard data on every read: every dataset of a shard is written with HDF5's
Fletcher-32 filter (a checksum of each one-image chunk, :func:`~hpc_bliss.io.schema.storage`),
so HDF5 itself refuses to return a damaged chunk, to any reader (h5py, h5dump, this package).

Here: whether a file's datasets carry the checksums (:func:`unprotected`), and reads that turn
HDF5's terse "filter returned failure" into a one-line :class:`ShardError` naming the file, the
dataset and the row (:func:`read_row`, :func:`read_whole`), also through dataset.h5's virtual
datasets (the shard file holding the row is named). ``content_sha256`` (a hash of the whole
data, checked by ``hpc-bliss validate``) stays the check of a file as a whole.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from hpc_bliss.errors import ShardError
from hpc_bliss.io.schema import shard_name

CHECKSUM = "Fletcher-32"
#: what to do with a damaged shard
REGENERATE = (
    "regenerate it: rerun `hpc-bliss generate` with the run's config (it remakes only the shards "
    "that fail validation)"
)


def unprotected(f: h5py.File) -> list[str]:
    """The datasets of file ``f`` written without Fletcher-32 (none, in a shard written since
    the checksums were added; all, in an older one)."""
    names: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset) and not obj.fletcher32:
            names.append(name)

    f.visititems(visit)
    return names


def file_unprotected(path: Path) -> list[str]:
    """:func:`unprotected` of the shard file at ``path`` (reads metadata only)."""
    try:
        with h5py.File(path, "r") as f:
            return unprotected(f)
    except OSError as err:
        raise ShardError(f"{path}: not a readable HDF5 file ({err})") from err


def _filter_failed(err: Exception) -> bool:
    """Whether HDF5's error is a failed filter (a checksum, or decompression) on reading."""
    text = str(err).lower()
    return any(word in text for word in ("filter", "checksum", "fletcher", "data error"))


def _stored_at(path: Path, dset: h5py.Dataset, row: int) -> tuple[Path, str, int]:
    """(file, dataset, row) where row ``row`` of ``dset`` is stored: ``dset`` itself, or for a
    virtual dataset (dataset.h5) the shard file it comes from, found through the split's
    ``shard_id`` and ``index_in_shard`` (HDF5 1.10 cannot give a virtual source's bounds)."""
    group = dset.parent
    if dset.is_virtual and "shard_id" in group and "index_in_shard" in group:
        sid, local = int(group["shard_id"][row]), int(group["index_in_shard"][row])
        for source in dset.virtual_sources():
            if Path(source.file_name).name == shard_name(sid):
                return path.parent / source.file_name, source.dset_name.lstrip("/"), local
    return path, dset.name.lstrip("/"), row


def _has_checksums(path: Path, name: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return bool(f[name].fletcher32)
    except (OSError, KeyError):
        return False


def read_failure(path: Path, dset: h5py.Dataset, row: int | None, err: Exception) -> ShardError:
    """The one-line error of a failed read of ``dset`` (row ``row``, or all of it) in ``path``:
    a failed Fletcher-32 checksum says so; any other failure quotes HDF5."""
    if row is None:
        file, name, where = path, dset.name.lstrip("/"), ""
        checked = dset.fletcher32
    else:
        file, name, stored_row = _stored_at(path, dset, row)
        where = f", row {stored_row}" + (f" (read through {path})" if file != path else "")
        checked = dset.fletcher32 if file == path else _has_checksums(file, name)
    if checked and _filter_failed(err):
        return ShardError(
            f"{file}: dataset {name}{where}: the data failed its {CHECKSUM} checksum "
            f"(the file is damaged on disk); {REGENERATE}"
        )
    return ShardError(f"{file}: dataset {name}{where}: cannot read ({err})")


def read_row(path: Path, group: h5py.Group, name: str, row: int) -> np.ndarray:
    """Row ``row`` of dataset ``name`` of ``group`` (a shard file, or a split of dataset.h5
    at ``path``); :class:`ShardError` naming file, dataset and row if it cannot be read."""
    try:
        dset = group[name]
    except KeyError as err:
        raise ShardError(f"{path}: dataset {name} missing ({err})") from err
    try:
        return dset[row]
    except (OSError, ValueError) as err:
        raise read_failure(path, dset, row, err) from err


def read_whole(path: Path, dset: h5py.Dataset) -> np.ndarray:
    """All of ``dset`` (every chunk's checksum checked); a :class:`ShardError` naming the first
    row that cannot be read (found by reading row by row, after the failure only)."""
    try:
        return dset[()]
    except (OSError, ValueError) as err:
        for row in range(dset.shape[0] if dset.shape else 0):
            read_row(path, dset.parent, dset.name.rsplit("/", 1)[-1], row)
        raise read_failure(path, dset, None, err) from err
