"""`hpc-bliss validate --refresh DIR`: accept a deliberate edit of shard data.

After shard data were changed on purpose through HDF5 (h5py, which rewrites each changed
chunk's Fletcher-32 checksum), every shard's ``content_sha256`` is recomputed; where it changed,
the shard gets the new one and an ``edited_utc`` root attribute, and manifest.json its new hash
and size and an entry in ``edited`` (id, file, utc, old_sha256, new_sha256). A shard written
before the checksums were added is rewritten with them (atomically: a ``.tmp`` then a rename).

Nothing is modified unless every listed shard passes first: its datasets keep the shapes and
dtypes of the schema, and every chunk passes its Fletcher-32 checksum (a chunk that fails was
changed on disk behind HDF5's back: damage, not an edit). A shard without checksums is
accepted only if its data still match its content_sha256: with no checksums, nothing tells an
edit from damage.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from omegaconf import OmegaConf

from hpc_bliss.errors import ShardError
from hpc_bliss.io.integrity import CHECKSUM, REGENERATE, read_whole, unprotected
from hpc_bliss.io.manifest import COLLECTIVE, MANIFEST, read_manifest, write_manifest
from hpc_bliss.io.schema import (
    DATASET_NAMES,
    SPECS,
    Dims,
    Manifest,
    ShardEdit,
    ShardRecord,
    content_sha256,
    shape_of,
)
from hpc_bliss.io.shards import read_attrs, rewrite_shard


@dataclass
class _Checked:
    """A shard that passed the checks: its manifest entry, its data's hash before (the
    manifest's) and now, whether that differs from its own ``content_sha256`` or the manifest's
    (``edited``), and whether it has Fletcher-32 checksums."""

    path: Path
    record: ShardRecord
    old_sha256: str
    new_sha256: str
    edited: bool
    protected: bool


def _check_layout(path: Path, f: h5py.File, dims: Dims) -> None:
    """Refuse datasets missing, or of a shape or dtype other than the schema's."""
    for name in DATASET_NAMES:
        spec = SPECS[name]
        want = (shape_of(spec, dims), np.dtype(spec.dtype))
        if name not in f:
            raise ShardError(f"{path}: dataset {name} missing; expected {want[0]} {want[1]}")
        dset = f[name]
        if (dset.shape, dset.dtype) != want:
            raise ShardError(
                f"{path}: dataset {name} is {dset.shape} {dset.dtype}, expected {want[0]} "
                f"{want[1]} (the schema): --refresh accepts edits of values, not of shapes "
                "or dtypes"
            )


def _read_checked(path: Path, f: h5py.File) -> list[tuple[str, np.ndarray]]:
    """Every dataset, each chunk's checksum checked; a failure is refused as damage."""
    try:
        return [(name, read_whole(path, f[name])) for name in DATASET_NAMES]
    except ShardError as err:
        raise ShardError(
            f"{err}; not accepted as an edit: an edit through HDF5 rewrites the {CHECKSUM} "
            "checksums, so these bytes were changed behind its back"
        ) from err


def _check(path: Path, record: ShardRecord, prior) -> _Checked:
    """Check one shard (see the module's docstring); raises :class:`ShardError` to refuse."""
    if not path.is_file():
        raise ShardError(f"{path}: listed in {MANIFEST} but missing on disk")
    attrs = read_attrs(path)
    try:
        with h5py.File(path, "r") as f:
            _check_layout(path, f, Dims.from_prior(prior, int(attrs["n_images"])))
            digest = content_sha256(_read_checked(path, f))
            protected = not unprotected(f)
    except (OSError, KeyError) as err:
        raise ShardError(f"{path}: unreadable ({err})") from err
    if not protected and digest != attrs["content_sha256"]:
        raise ShardError(
            f"{path}: written without {CHECKSUM} checksums and its data no longer match its "
            f"content_sha256: nothing tells an edit from damage, so --refresh refuses it; "
            f"{REGENERATE}"
        )
    old = record.get("content_sha256", attrs["content_sha256"])
    edited = digest != old or digest != attrs["content_sha256"]
    return _Checked(path, record, old, digest, edited, protected)


def _apply(c: _Checked, utc: str, log: Callable[[str], None]) -> ShardEdit | None:
    """Write what the check found: the new hash (and ``edited_utc``), the checksums of an
    unprotected shard; update its manifest entry. Returns the edit, if the data changed."""
    attrs = {"content_sha256": c.new_sha256, "edited_utc": utc} if c.edited else {}
    if not c.protected:
        rewrite_shard(c.path, c.path, attrs)
        log(f"[refresh] {c.path}: rewritten with {CHECKSUM} checksums on every dataset")
    elif attrs:
        with h5py.File(c.path, "r+") as f:
            f.attrs.update(attrs)
    c.record["content_sha256"] = c.new_sha256
    c.record["bytes"] = c.path.stat().st_size
    if not c.edited:
        return None
    log(f"[refresh] {c.path}: data edited, content_sha256 {c.new_sha256[:12]}… recorded")
    return {
        "id": c.record["id"],
        "file": c.record["file"],
        "utc": utc,
        "old_sha256": c.old_sha256,
        "new_sha256": c.new_sha256,
    }


def _check_all(data_dir: Path, manifest: Manifest) -> list[_Checked]:
    if manifest.get("io") == "mpio" or any(r["file"] == COLLECTIVE for r in manifest["shards"]):
        raise ShardError(
            f"{data_dir}: --refresh works on shard files (generate.io=files), not {COLLECTIVE}"
        )
    prior = OmegaConf.create(manifest["config_yaml"]).prior
    return [_check(data_dir / r["file"], r, prior) for r in manifest["shards"]]


def refresh_dir(data_dir: str | Path, log: Callable[[str], None] = print) -> list[ShardEdit]:
    """Accept the edits of a generate.output_dir's shards (see the module's docstring) and
    rewrite its manifest; returns the edits recorded. Raises :class:`ShardError` naming the
    first shard refused (file, dataset, what was expected), having modified nothing."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    try:
        checked = _check_all(data_dir, manifest)
    except ShardError as err:
        raise ShardError(f"validate --refresh refused, nothing was modified: {err}") from err
    todo = [c for c in checked if c.edited or not c.protected]
    utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    edits = [e for e in (_apply(c, utc, log) for c in todo) if e is not None]
    if todo:
        manifest["edited"] = [*manifest.get("edited", []), *edits]
        write_manifest(data_dir, manifest)
    log(
        f"[refresh] {len(checked)} shard(s) checked: {len(edits)} edit(s) recorded in "
        f"{data_dir / MANIFEST}, {sum(not c.protected for c in todo)} given checksums"
    )
    return edits
