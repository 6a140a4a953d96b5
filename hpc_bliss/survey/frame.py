"""One band's calibrated SDSS frame: the image, its calibration vector, its sky and its WCS.

HDU 0 is the sky-subtracted image in nmgy per pixel (H × W, rows are the drift direction);
HDU 1 the calibration per column, nmgy per count; HDU 2 the sky in counts as a coarse grid
``ALLSKY`` with ``XINTERP`` (W,) and ``YINTERP`` (H,), the grid coordinates of each column
and row. The sky per pixel is ALLSKY bilinearly interpolated there, as the SDSS data model
prescribes (``sky_counts(row, col) = ALLSKY(YINTERP[row], XINTERP[col])``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates

from hpc_bliss.survey.files import SurveyError, read_hdus


@dataclass
class Frame:
    """A band's frame in its own pixel grid (arrays float32 unless noted)."""

    band: str
    path: Path
    image: np.ndarray  #: (H, W) nmgy per pixel, sky-subtracted
    calib: np.ndarray  #: (W,) nmgy per count, per column
    allsky: np.ndarray  #: (Hs, Ws) sky grid, counts
    xinterp: np.ndarray  #: (W,) grid column of each pixel column
    yinterp: np.ndarray  #: (H,) grid row of each pixel row
    header: Any  #: HDU 0's header (astropy Header)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    def wcs(self) -> Any:
        """The frame's astropy WCS (pixel (x, y) = (col, row), 0-based, centres at integers)."""
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # RADECSYS: deprecated spelling
            return WCS(self.header)

    def sky_counts(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Sky in counts at (possibly fractional) pixel positions ``rows``, ``cols`` (same
        shape): the grid read at the interpolated XINTERP / YINTERP."""
        gy = np.interp(rows, np.arange(self.yinterp.size), self.yinterp)
        gx = np.interp(cols, np.arange(self.xinterp.size), self.xinterp)
        return map_coordinates(self.allsky, [gy, gx], order=1, mode="nearest")

    def calib_at(self, cols: np.ndarray) -> np.ndarray:
        """nmgy per count at (possibly fractional) columns (linear between columns)."""
        return np.interp(cols, np.arange(self.calib.size), self.calib)


def read_frame(path: Path, band: str) -> Frame:
    """Read ``path`` (a frame of ``band``); SurveyError naming the file when it is not one."""
    (h0, image), (_, calib), (_, sky) = read_hdus(path, (0, 1, 2))
    filt = str(h0.get("FILTER", band)).strip()
    if filt != band:
        raise SurveyError(f"{path}: header FILTER = {filt!r}, expected band {band!r}")
    if image is None or image.ndim != 2:
        raise SurveyError(f"{path}: HDU 0 is not a 2-D image")
    h, w = image.shape
    if calib is None or calib.shape != (w,):
        raise SurveyError(f"{path}: HDU 1 should be the calibration vector of {w} columns")
    try:
        allsky = np.asarray(sky["ALLSKY"][0], np.float32)
        xinterp = np.asarray(sky["XINTERP"][0], np.float64)
        yinterp = np.asarray(sky["YINTERP"][0], np.float64)
    except (KeyError, TypeError, IndexError) as err:
        raise SurveyError(f"{path}: HDU 2 lacks ALLSKY/XINTERP/YINTERP ({err})") from err
    if xinterp.shape != (w,) or yinterp.shape != (h,):
        raise SurveyError(f"{path}: HDU 2 XINTERP/YINTERP do not match the {h}×{w} image")
    return Frame(
        band=band,
        path=path,
        image=np.asarray(image, np.float32),
        calib=np.asarray(calib, np.float64),
        allsky=allsky.reshape(allsky.shape[-2:]),
        xinterp=xinterp,
        yinterp=yinterp,
        header=h0,
    )
