"""Shard files: one HDF5 file per shard, written atomically (:func:`write_shard`), readable by any
HDF5 tool (no pickles, no custom filters: gzip and Fletcher-32 are built into HDF5), checked on
every read (each chunk's Fletcher-32 checksum) and as a whole (:func:`validate_shard`).

What a shard holds (datasets, dtypes, shapes, units, root attributes) is
:mod:`hpc_bliss.io.schema`; ``shard-000042.h5`` is its datasets at their paths, every root
attribute of :data:`~hpc_bliss.io.schema.REQUIRED_ATTRS`, and a ``units`` attribute on each
dataset. ``content_sha256`` hashes every dataset (name, dtype, shape, bytes) in a fixed order:
it is the same for the same (config, seed, shard id) whatever rank or host wrote the file,
while the provenance attributes (created_utc, host, rank, device) say who did.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpc_bliss import __version__
from hpc_bliss.errors import ShardError
from hpc_bliss.io.integrity import read_whole
from hpc_bliss.io.schema import (
    CATALOG_KEYS,
    DATASET_NAMES,
    REQUIRED_ATTRS,
    SCHEMA_VERSION,
    SPECS,
    content_sha256,
    storage,
)


@dataclass
class ShardData:
    """The arrays of one shard (numpy, in their on-disk dtypes)."""

    images: np.ndarray
    background: np.ndarray
    psf_params: np.ndarray
    catalog: dict[str, np.ndarray]
    units: str = "nmgy"

    def datasets(self) -> list[tuple[str, np.ndarray]]:
        """(path in the file, array) in the fixed order the content hash uses."""
        arrays = {
            "images": self.images,
            "background": self.background,
            "psf_params": self.psf_params,
        }
        arrays.update({f"tile_catalog/{k}": self.catalog[k] for k in CATALOG_KEYS})
        return [(name, arrays[name]) for name in DATASET_NAMES]

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """``path.tmp`` to write, then fsynced and renamed to ``path``: a file that exists is whole.
    On any failure the ``.tmp`` is removed; an OSError becomes a :class:`ShardError` naming
    ``path`` (saying so for a full disk)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        reason = "disk full (no space left on device)" if err.errno == errno.ENOSPC else err
        raise ShardError(f"cannot write {path}: {reason}") from err


def write_shard(
    path: Path, data: ShardData, attrs: dict, compression: str = "gzip", checksums: bool = True
) -> dict:
    """Write ``data`` to ``path`` atomically: ``path.tmp`` is written, flushed, fsynced, then
    renamed, so a shard file that exists is whole. Returns the root attributes written.
    Every dataset carries HDF5's Fletcher-32 checksum of each chunk (``checksums=False``: none,
    only for a benchmark of their cost; see :func:`~hpc_bliss.io.schema.storage`).

    Raises :class:`ShardError` naming the file for an unwritable directory or a full disk;
    the partial ``.tmp`` is removed and nothing already written is touched.
    """
    path = Path(path)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "hpc_bliss_version": __version__,
        "n_images": data.n_images,
        "content_sha256": content_sha256(data.datasets()),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        **attrs,
    }
    with _atomic(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(meta)
        for name, arr in data.datasets():
            spec = SPECS[name]
            keywords = storage(spec, arr.shape, compression, checksums)
            dset = f.create_dataset(name, data=arr, **keywords)
            dset.attrs["units"] = spec.units_for(data.units)
        f.flush()
    return meta


def rewrite_shard(src: Path, dst: Path, attrs: dict | None = None, checksums: bool = True) -> None:
    """Copy the shard ``src`` to ``dst`` (the same path, or another) atomically, in today's
    storage (:func:`~hpc_bliss.io.schema.storage`: Fletcher-32 unless ``checksums=False``; gzip
    as ``src`` has it), with its attributes updated by ``attrs``. Every chunk read is checked;
    a damaged one raises :class:`ShardError` and ``dst`` is left as it was."""
    src, dst = Path(src), Path(dst)
    with h5py.File(src, "r") as f, _atomic(dst) as tmp, h5py.File(tmp, "w") as out:
        out.attrs.update({**f.attrs, **(attrs or {})})
        gzip = f["tile_catalog/n_sources"].compression == "gzip"
        for name in DATASET_NAMES:
            dset = f[name]
            keywords = storage(SPECS[name], dset.shape, "gzip" if gzip else "none", checksums)
            copy = out.create_dataset(name, data=read_whole(src, dset), **keywords)
            copy.attrs.update(dset.attrs)
        out.flush()


def read_attrs(path: Path) -> dict:
    """Root attributes of a shard (raises ShardError naming the file if it cannot be read)."""
    try:
        with h5py.File(path, "r") as f:
            return {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as err:
        raise ShardError(f"{path}: not a readable HDF5 file ({err})") from err


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def validate_shard(
    path: Path, config_hash: str | None = None, check_content: bool = True
) -> list[str]:
    """Problems with the shard at ``path`` (an empty list means it is valid): it opens, has
    every attribute and dataset of the schema with consistent shapes and dtypes, matches
    ``config_hash`` when given, and its data hash to ``content_sha256``."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: missing"]
    problems: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            missing = [k for k in REQUIRED_ATTRS if k not in attrs]
            if missing:
                return [f"{path}: missing attributes {missing}"]
            if attrs["schema_version"] != SCHEMA_VERSION:
                problems.append(
                    f"{path}: schema_version {attrs['schema_version']}, expected {SCHEMA_VERSION}"
                )
            if config_hash is not None and attrs["config_hash"] != config_hash:
                problems.append(
                    f"{path}: config_hash {attrs['config_hash']}, expected {config_hash}"
                )
            n = attrs["n_images"]
            items: list[tuple[str, np.ndarray]] = []
            for name in DATASET_NAMES:
                if name not in f:
                    problems.append(f"{path}: dataset {name} missing")
                    continue
                dset = f[name]
                if dset.shape[:1] != (n,):
                    problems.append(f"{path}: {name} has {dset.shape[0]} rows, expected {n}")
                want = SPECS[name].dtype
                if dset.dtype != np.dtype(want):
                    problems.append(f"{path}: {name} has dtype {dset.dtype}, expected {want}")
                if check_content and not problems:
                    items.append((name, read_whole(path, dset)))
            if check_content and not problems:
                digest = content_sha256(items)
                if digest != attrs["content_sha256"]:
                    problems.append(
                        f"{path}: data checksum {digest[:12]}… does not match "
                        f"content_sha256 {attrs['content_sha256'][:12]}… (damaged, or edited: "
                        "`hpc-bliss validate --refresh` accepts a deliberate edit)"
                    )
    except ShardError as err:  # a chunk that fails its checksum, named
        problems.append(str(err))
    except (OSError, KeyError, ValueError) as err:
        problems.append(f"{path}: unreadable ({err})")
    return problems


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()
