"""Shard files: one HDF5 file per shard, written atomically (:func:`write_shard`), readable by any
HDF5 tool (no pickles, no custom filters), and checked (:func:`validate_shard`).

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
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpc_bliss import __version__
from hpc_bliss.errors import ShardError
from hpc_bliss.io.schema import (
    CATALOG_KEYS,
    DATASET_NAMES,
    REQUIRED_ATTRS,
    SCHEMA_VERSION,
    SPECS,
    content_sha256,
    storage,
)


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.h5"


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(path: Path, data: ShardData, attrs: dict, compression: str = "gzip") -> dict:
    """Write ``data`` to ``path`` atomically: ``path.tmp`` is written, flushed, fsynced, then
    renamed, so a shard file that exists is whole. Returns the root attributes written.

    Raises :class:`ShardError` naming the file for an unwritable directory or a full disk;
    the partial ``.tmp`` is removed and nothing already written is touched.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    digest = content_sha256(data.datasets())
    meta = {
        "schema_version": SCHEMA_VERSION,
        "hpc_bliss_version": __version__,
        "n_images": data.n_images,
        "content_sha256": digest,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        **attrs,
    }
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in meta.items():
                f.attrs[key] = value
            for name, arr in data.datasets():
                spec = SPECS[name]
                dset = f.create_dataset(name, data=arr, **storage(spec, arr.shape, compression))
                dset.attrs["units"] = spec.units_for(data.units)
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = "disk full (no space left on device)" if err.errno == errno.ENOSPC else err
        raise ShardError(f"cannot write {path}: {reason}") from err
    return meta


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
                    items.append((name, dset[()]))
            if check_content and not problems:
                digest = content_sha256(items)
                if digest != attrs["content_sha256"]:
                    problems.append(
                        f"{path}: data checksum {digest[:12]}… does not match "
                        f"content_sha256 {attrs['content_sha256'][:12]}…"
                    )
    except (OSError, KeyError, ValueError) as err:
        problems.append(f"{path}: unreadable ({err})")
    return problems


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()
