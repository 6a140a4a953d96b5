"""The catalog of one field: HDF5, one dataset per quantity, readable by any HDF5 tool
(``h5ls -r catalog.h5``, ``h5py``) and by :func:`read_catalog`.

Every dataset has S rows, one per source (S × B for per-band ones, bands in the ``bands``
attribute) and ``units`` / ``description`` attributes (:data:`COLUMNS`). Positions follow the
project's convention: (row, col) in pixels of the reference band's frame, measured from the
top-left corner of its first pixel (pixel centres at half-integers); ``ra`` / ``dec`` come from
that frame's WCS. ``samples/K/`` holds posterior sample K (row, col, flux, is_galaxy). The file
is written to a temporary name and renamed: a catalog.h5 that exists is whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.catalog.base import nmgy_to_mag
from hpc_bliss.errors import ShardError

FORMAT = "hpc-bliss field catalog"  #: the ``format`` attribute
VERSION = 1  #: the ``format_version`` attribute
LN10 = 2.5 / np.log(10)  #: mag per unit of log flux

#: name → (units, description) of each per-source dataset
COLUMNS: dict[str, tuple[str, str]] = {
    "row": ("pixel", "row in the reference band's frame, from the top edge (centres at i + 0.5)"),
    "col": ("pixel", "column in the reference band's frame, from the left edge"),
    "ra": ("deg", "right ascension (ICRS) from the reference frame's WCS"),
    "dec": ("deg", "declination (ICRS) from the reference frame's WCS"),
    "flux": ("nmgy", "flux per band (posterior median)"),
    "flux_err": ("nmgy", "posterior standard deviation of the flux per band"),
    "mag": ("mag", "AB magnitude per band, 22.5 - 2.5 log10(flux)"),
    "mag_err": ("mag", "1.0857 × the posterior σ of log flux"),
    "galaxy_prob": ("", "posterior probability that the source is a galaxy"),
    "is_galaxy": ("", "1 galaxy, 0 star (the mode)"),
    "exist_prob": ("", "posterior probability that the source exists (tile count ≥ its slot)"),
    "mask_flags": ("bits", "fpM mask bits at the source's pixel, per band (mask_bits names them)"),
}


def sources(cat: TileCatalog, offset_px: float, field: Any) -> dict[str, np.ndarray]:
    """The per-source columns of a stitched tile catalog (N = 1) whose tile (0, 0) starts
    ``offset_px`` pixels from the frame's corner; ``field`` (a SurveyField) gives ra/dec and
    mask flags."""
    full = cat.to_full_catalog()
    n = int(full["n_sources"][0])
    plocs = full["plocs"][0, :n].double().numpy() + offset_px
    flux = full.fluxes[0, :n].double().numpy()
    ra, dec = field.pixel_to_radec(plocs[:, 0], plocs[:, 1])
    h, w = field.shape
    r = np.clip(plocs[:, 0].astype(np.int64), 0, h - 1)
    c = np.clip(plocs[:, 1].astype(np.int64), 0, w - 1)
    sd = full["log_flux_sd"][0, :n].double().numpy()
    return {
        "row": plocs[:, 0],
        "col": plocs[:, 1],
        "ra": ra,
        "dec": dec,
        "flux": flux.astype(np.float32),
        "flux_err": full["flux_err"][0, :n].numpy().astype(np.float32),
        "mag": nmgy_to_mag(full.fluxes[0, :n]).numpy().astype(np.float32),
        "mag_err": (LN10 * sd).astype(np.float32),
        "galaxy_prob": full["galaxy_prob"][0, :n, 0].numpy().astype(np.float32),
        "is_galaxy": full["source_type"][0, :n, 0].numpy().astype(np.uint8),
        "exist_prob": full["exist_prob"][0, :n, 0].numpy().astype(np.float32),
        "mask_flags": field.mask[:, r, c].T.astype(np.int32),
    }


def sample_sources(cat: TileCatalog, offset_px: float) -> dict[str, np.ndarray]:
    """Position, flux and type of a posterior sample's sources."""
    full = cat.to_full_catalog()
    n = int(full["n_sources"][0])
    plocs = full["plocs"][0, :n].double().numpy() + offset_px
    return {
        "row": plocs[:, 0],
        "col": plocs[:, 1],
        "flux": full.fluxes[0, :n].numpy().astype(np.float32),
        "is_galaxy": full.galaxy_bools[0, :n, 0].numpy().astype(np.uint8),
    }


def _attr(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def write_catalog(
    path: Path, columns: dict[str, np.ndarray], attrs: dict[str, Any], samples: list[dict]
) -> None:
    """Write ``path`` atomically: ``columns`` as datasets, ``attrs`` as root attributes
    (lists and dicts as JSON), posterior ``samples`` under samples/K."""
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": VERSION})
        f.attrs.update({k: _attr(v) for k, v in attrs.items()})
        f.attrs["n_sources"] = len(columns["row"])
        for name, values in columns.items():
            ds = f.create_dataset(name, data=values)
            ds.attrs["units"], ds.attrs["description"] = COLUMNS[name]
        for k, sample in enumerate(samples):
            group = f.create_group(f"samples/{k:03d}")
            for name, values in sample.items():
                group.create_dataset(name, data=values).attrs["units"] = COLUMNS[name][0]
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, path)


def read_catalog(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(columns, attributes) of a catalog file; attributes written as JSON are decoded.
    ShardError naming the file when it is not a whole catalog of this format."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ShardError(
                    f"{path}: not a {FORMAT} (format attribute {f.attrs.get('format')!r})"
                )
            columns = {k: f[k][()] for k in COLUMNS if k in f}
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except OSError as err:
        raise ShardError(f"{path}: cannot read it as HDF5 ({err})") from err
    missing = [k for k in COLUMNS if k not in columns]
    if missing:
        raise ShardError(f"{path}: lacks the datasets {missing}")
    return columns, attrs


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value
