"""The psField PSF against the frame itself: fit it to the brightest unsaturated isolated
stars of each band and measure what is left.

Per band, on the band's own frame (never resampled): candidates are local maxima (5 × 5)
whose peak is above ``min_snr`` σ; a candidate is kept when no INTERP, SATUR or CR mask bit
lies within ``half + 2`` px, it is ``half + 2`` px from the edges, and no other local maximum
brighter than 5 σ and 2% of its peak lies within ``isolation`` px. The ``n`` brightest are fit
on a (2·half + 1)² stamp with the model a·PSF(· - (dy, dx)) + c (a, c linear; the sub-pixel
shift by least squares; the PSF pixelised by :func:`psf_image` and shifted in Fourier space).
Reported per star: ``chi_rms``, the RMS of (data - model) / σ over the stamp (1 for a perfect
model), and ``rel_residual``, |data - model| / |model - c| (L2 norms over the stamp).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import maximum_filter
from scipy.optimize import least_squares

from hpc_bliss.simulate.psf import psf_image
from hpc_bliss.survey.frame import Frame

BAD_BITS = (1 << 0) | (1 << 1) | (1 << 9)  #: INTERP, SATUR, CR


def candidates(image: np.ndarray, sigma: np.ndarray, mask: np.ndarray, **kw) -> np.ndarray:
    """(K, 2) integer (row, col) peaks of bright, clean, isolated stars, brightest first."""
    half, isolation, min_snr = kw.get("half", 7), kw.get("isolation", 10), kw.get("min_snr", 50.0)
    peaks = (image == maximum_filter(image, size=5)) & (image > 5 * sigma)
    rows, cols = np.nonzero(peaks)
    values = image[rows, cols]
    h, w = image.shape
    edge = half + 2
    bad = maximum_filter((mask & BAD_BITS) > 0, size=2 * edge + 1)
    keep = []
    for k in np.argsort(-values):
        r, c, v = rows[k], cols[k], values[k]
        if v < min_snr * sigma[r, c] or bad[r, c]:
            continue
        if not (edge <= r < h - edge and edge <= c < w - edge):
            continue
        near = (np.abs(rows - r) <= isolation) & (np.abs(cols - c) <= isolation)
        near &= values > 0.02 * v
        if near.sum() > 1:  # itself, plus another peak
            continue
        keep.append((r, c))
    return np.asarray(keep, np.int64).reshape(-1, 2)


def _shifted_psf(
    psf_params: np.ndarray, half: int, radius: float
) -> Callable[[float, float], np.ndarray]:
    """(dy, dx) → the unit-flux pixelised PSF on the (2·half + 1)² stamp, shifted by (dy, dx)."""
    big = 2 * (half + 8) + 1
    stamp = psf_image(torch.as_tensor(psf_params[None]), big, radius)[0].numpy()
    ft = np.fft.fft2(np.fft.ifftshift(stamp))
    ky, kx = np.fft.fftfreq(big)[:, None], np.fft.fftfreq(big)[None, :]
    lo = big // 2 - half

    def model(dy: float, dx: float) -> np.ndarray:
        img = np.fft.fftshift(np.fft.ifft2(ft * np.exp(-2j * np.pi * (ky * dy + kx * dx))).real)
        return img[lo : lo + 2 * half + 1, lo : lo + 2 * half + 1]

    return model


def fit_star(data: np.ndarray, sigma: np.ndarray, psf_of) -> dict[str, float]:
    """Fit a·psf(dy, dx) + c to a stamp; chi_rms and rel_residual as the module says."""

    def linear(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = psf_of(*shift)
        design = np.stack([p.ravel(), np.ones(p.size)], -1) / sigma.ravel()[:, None]
        coef, *_ = np.linalg.lstsq(design, data.ravel() / sigma.ravel(), rcond=None)
        return coef, (coef[0] * p + coef[1])

    def chi(shift: np.ndarray) -> np.ndarray:
        return ((data - linear(shift)[1]) / sigma).ravel()

    best = least_squares(chi, x0=np.zeros(2), bounds=([-1.5, -1.5], [1.5, 1.5]))
    coef, model = linear(best.x)
    res = data - model
    return {
        "flux": float(coef[0]),
        "chi_rms": float(np.sqrt(np.mean((res / sigma) ** 2))),
        "rel_residual": float(np.linalg.norm(res) / np.linalg.norm(model - coef[1])),
    }


def psf_star_residuals(
    frame: Frame, mask: np.ndarray, psf_params: np.ndarray, gain: float, dark: float, **kw
) -> list[dict[str, float]]:
    """Fit the PSF ``psf_params`` (6,) to the ``n`` (default 20) brightest clean isolated stars
    of ``frame``; one dict per star (row, col, flux, chi_rms, rel_residual)."""
    half, n, radius = kw.get("half", 7), kw.get("n", 20), kw.get("radius", 15.0)
    calib = frame.calib[None, :]
    h, w = frame.shape
    rows, cols = np.mgrid[0:h, 0:w]
    sky = frame.sky_counts(rows.astype(float), cols.astype(float)) * calib
    var = (np.clip(frame.image, 0, None) + sky) * calib / gain + dark * calib**2
    sigma = np.sqrt(var)
    psf_of = _shifted_psf(np.asarray(psf_params, np.float64), half, radius)
    out = []
    for r, c in candidates(frame.image, sigma, mask, **kw)[:n]:
        box = (slice(r - half, r + half + 1), slice(c - half, c + half + 1))
        out.append({"row": int(r), "col": int(c), **fit_star(frame.image[box], sigma[box], psf_of)})
    return out
