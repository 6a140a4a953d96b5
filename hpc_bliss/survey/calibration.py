"""A field's calibration from psField (PSF, sky, gain, dark variance) and photoField
(calibration in nmgy per count, per field of the camcol).

The psField PSF is two Gaussians plus a power-law wing per band: psf_sigma1, psf_sigma2 (px),
psf_b (the second Gaussian's amplitude relative to the first), psf_p0, psf_beta, psf_sigmap
(px). That is the project's own PSF form (:mod:`hpc_bliss.simulate.psf`) term by term, so the
parameters are used as they are, in the order of ``PSF_KEYS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpc_bliss.survey.files import FieldFiles, SurveyError, read_hdus

SDSS_ORDER = ("u", "g", "r", "i", "z")  #: the band order of psField and photoField columns
#: psField HDU 6 column of each entry of PSF_KEYS (sigma1, sigma2, b, sigmap, beta, p0)
PSF_COLUMNS = ("psf_sigma1", "psf_sigma2", "psf_b", "psf_sigmap", "psf_beta", "psf_p0")
MIN_BETA = 2.05  #: the wing's β must be > 2 (finite flux); a psField value below is raised to it


@dataclass
class Calibration:
    """Per-band values of one field, in the order of ``bands``."""

    bands: list[str]
    psf: np.ndarray  #: (B, 6) float64 in PSF_KEYS order
    sky_counts: np.ndarray  #: (B,) psField sky, counts per pixel
    gain: np.ndarray  #: (B,) electrons per count
    dark_variance: np.ndarray  #: (B,) counts² per pixel
    nmgy_per_count: np.ndarray  #: (B,) photoField NMGYPERCOUNT

    @property
    def nelec_per_nmgy(self) -> np.ndarray:
        """(B,) electrons per nanomaggy: gain / NMGYPERCOUNT."""
        return self.gain / self.nmgy_per_count

    @property
    def sky_nmgy(self) -> np.ndarray:
        """(B,) the psField sky in nmgy per pixel."""
        return self.sky_counts * self.nmgy_per_count


def _columns(bands: list[str], path: object) -> list[int]:
    bad = [b for b in bands if b not in SDSS_ORDER]
    if bad:
        raise SurveyError(f"{path}: bands {bad} are not SDSS bands {list(SDSS_ORDER)}")
    return [SDSS_ORDER.index(b) for b in bands]


def _value(table: Any, column: str, path: object) -> np.ndarray:
    """Column ``column`` (any case) of a one-row table, as a float64 vector."""
    names = [n.lower() for n in table.columns.names]
    if column.lower() not in names:
        raise SurveyError(f"{path}: no column {column!r}")
    value = np.asarray(table[table.columns.names[names.index(column.lower())]][0], np.float64)
    return value.reshape(-1)


def read_calibration(files: FieldFiles, bands: list[str]) -> Calibration:
    """The calibration of ``bands`` from the field's psField (HDU 6) and photoField row."""
    psfield = files.psfield()
    cols = _columns(bands, psfield)
    ((_, table),) = read_hdus(psfield, (6,))
    if table is None or len(table) != 1:
        raise SurveyError(f"{psfield}: HDU 6 should hold one row of per-band PSF values")
    psf = np.stack([_value(table, c, psfield)[cols] for c in PSF_COLUMNS], axis=-1)
    psf[:, 4] = np.maximum(psf[:, 4], MIN_BETA)
    photo = files.photofield()
    ((_, ptable),) = read_hdus(photo, (1,))
    mine = ptable[np.asarray(ptable["FIELD"]) == files.field] if ptable is not None else []
    if len(mine) != 1:
        raise SurveyError(f"{photo}: expected one row with FIELD == {files.field}")
    return Calibration(
        bands=list(bands),
        psf=psf,
        sky_counts=_value(table, "sky", psfield)[cols],
        gain=_value(mine, "GAIN", photo)[cols],
        dark_variance=_value(mine, "DARK_VARIANCE", photo)[cols],
        nmgy_per_count=_value(mine, "NMGYPERCOUNT", photo)[cols],
    )
