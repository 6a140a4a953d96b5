"""One SDSS field read whole: the bands on the reference band's pixel grid, in nmgy, with the
sky, the noise model, the PSF, the masks and the WCS.

Noise model (SDSS's own): a pixel of d counts above the bias holds d·gain electrons, Poisson,
plus the read noise and dark current, ``dark_variance`` counts². With the image ``x`` and sky
``s`` in nmgy and the calibration ``c`` in nmgy per count (so d = (x + s) / c)::

    electrons per nmgy = gain / c,      variance(x) = (x + s)·c / gain + dark_variance·c²  nmgy².

``SurveyField.variance(model)`` evaluates it for an image or a model of the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpc_bliss.survey.align import AlignedBand, align_band, own_grid
from hpc_bliss.survey.calibration import Calibration, read_calibration
from hpc_bliss.survey.files import FieldFiles, SurveyError, field_files
from hpc_bliss.survey.frame import read_frame
from hpc_bliss.survey.masks import read_fpm


@dataclass
class SurveyField:
    """A field on the reference band's grid; arrays (B, H, W) float32 unless noted."""

    files: FieldFiles
    bands: list[str]
    reference_band: int  #: index into ``bands`` of the band whose pixel grid is used
    image: np.ndarray  #: nmgy per pixel, sky-subtracted
    sky: np.ndarray  #: nmgy per pixel (the frames' HDU 2 grids, interpolated)
    calib: np.ndarray  #: nmgy per count (the frames' HDU 1 vectors)
    mask: np.ndarray  #: int32 fpM bits (:data:`hpc_bliss.survey.masks.FLAG_NAMES`)
    calibration: Calibration  #: psField / photoField values per band
    wcs: Any  #: the reference band's astropy WCS
    headers: list[Any] = field(default_factory=list)  #: each band's HDU 0 header
    shifts: list[tuple[float, float]] = field(default_factory=list)  #: mean (row, col) offsets
    affine_errors: list[float] = field(default_factory=list)  #: px, per band

    @property
    def field_id(self) -> str:
        return self.files.field_id

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) pixels."""
        h, w = self.image.shape[-2:]
        return h, w

    @property
    def psf(self) -> np.ndarray:
        """(B, 6) PSF parameters in PSF_KEYS order."""
        return self.calibration.psf

    def nelec_per_nmgy(self) -> np.ndarray:
        """(B, H, W) electrons per nmgy: gain / calibration."""
        return self.calibration.gain[:, None, None] / self.calib

    def variance(self, signal: np.ndarray | None = None) -> np.ndarray:
        """(B, H, W) noise variance in nmgy² of pixels holding ``signal`` (nmgy above the sky;
        default: the image itself, clipped at 0)."""
        x = np.clip(self.image if signal is None else signal, 0.0, None)
        gain = self.calibration.gain[:, None, None]
        dark = self.calibration.dark_variance[:, None, None]
        return ((x + self.sky) * self.calib / gain + dark * self.calib**2).astype(np.float32)

    def pixel_to_radec(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in degrees of positions in our convention (row, col measured from the
        top-left pixel corner, so pixel centres are at half-integers)."""
        ra, dec = self.wcs.all_pix2world(np.asarray(cols) - 0.5, np.asarray(rows) - 0.5, 0)
        return np.asarray(ra, np.float64), np.asarray(dec, np.float64)


def read_field(
    directory: str | Path, bands: list[str], reference_band: int = 2, masks: bool = True
) -> SurveyField:
    """Read the field in ``directory`` (SDSS archive layout) for ``bands``, aligned onto the
    grid of ``bands[reference_band]``. ``masks=False`` skips the fpM files (mask all 0)."""
    files = field_files(directory)
    calibration = read_calibration(files, list(bands))
    frames = [read_frame(files.frame(b), b) for b in bands]
    ref = frames[reference_band]
    shape = ref.shape
    for f in frames:
        if f.shape != shape:
            raise SurveyError(f"{f.path}: a {f.shape} frame, but band {ref.band} is {shape}")
    ref_wcs = ref.wcs()
    aligned: list[AlignedBand] = []
    for i, f in enumerate(frames):
        mask = read_fpm(files.fpm(f.band), shape) if masks else np.zeros(shape, np.int32)
        aligned.append(
            own_grid(f, mask) if i == reference_band else align_band(f, mask, ref_wcs, shape)
        )
    return SurveyField(
        files=files,
        bands=list(bands),
        reference_band=reference_band,
        image=np.stack([a.image for a in aligned]),
        sky=np.stack([a.sky for a in aligned]),
        calib=np.stack([a.calib for a in aligned]),
        mask=np.stack([a.mask for a in aligned]),
        calibration=calibration,
        wcs=ref_wcs,
        headers=[f.header for f in frames],
        shifts=[a.shift for a in aligned],
        affine_errors=[a.affine_error for a in aligned],
    )
