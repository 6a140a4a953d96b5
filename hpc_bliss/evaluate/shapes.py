"""Galaxy ellipticities for the lensing baselines, and their means per cell.

Convention (the renderer's, :mod:`hpc_bliss.simulate.render`): a shape whose second-moment
matrix is C in (x, y) = (column, row) has χ = (Cxx − Cyy, 2 Cxy) / (Cxx + Cyy) and ellipticity
ε = χ / (1 + sqrt(1 − |χ|²)), so |ε| = (1 − q) / (1 + q) for axis ratio q, and ε1 > 0 along x,
ε2 > 0 along x = y, like γ. A source of intrinsic ε_s lensed by the reduced shear g has
ε = (ε_s + g) / (1 + g* ε_s) (complex numbers, g* the conjugate), whose mean over random
orientations is g = γ / (1 − κ) (Seitz & Schneider 1997): a mean of ellipticities estimates the
shear, up to the factor 1 / (1 − κ) (γ·κ ~ 1e-3 for |γ|, |κ| of a few percent).

* Oracle (:func:`catalog_ellipticities`): each true galaxy's ε as the renderer draws it (its
  disk and bulge at their axis ratios and common angle, lensed by its tile's reduced shear),
  the flux-weighted (``disk_frac``) mean of the two components'. Limited only by shape noise.
* Moments (:func:`moment_covariances`): Gaussian-weighted second moments (weight σ_w) about
  each SEP detection in one band, with an iterated centroid, corrected for the weight as for a
  Gaussian profile, (M⁻¹ − W⁻¹)⁻¹, then for the PSF by subtracting the PSF's own covariance
  measured the same way (:func:`psf_covariance`). Exact for Gaussian galaxies and PSF; biased by
  other profiles, noise and blends: a classical estimator, not a calibrated one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hpc_bliss.catalog import REF_BAND, FullCatalog, TileCatalog
from hpc_bliss.config import RenderConfig
from hpc_bliss.io.schema import GALAXY_PARAMS
from hpc_bliss.simulate.lensing import reduced_shear_and_magnification

SIGMA_W = 3.0  #: pixels, the Gaussian weight of the moments (PSF core plus a small galaxy)
MIN_SIZE = 0.2  #: a corrected size Cxx + Cyy below this fraction of the PSF's is left out (a star)


def _lensed(q: Tensor, beta: Tensor, g: Tensor) -> Tensor:
    """ε (as complex) of a shape of axis ratio ``q`` and angle ``beta`` lensed by ``g``."""
    eps = ((1 - q) / (1 + q)) * torch.polar(torch.ones_like(beta), 2 * beta)
    return (eps + g) / (1 + g.conj() * eps)


def catalog_ellipticities(cat: TileCatalog) -> tuple[Tensor, Tensor]:
    """Lensed ellipticities (N, Ht, Wt, M, 2) float64 of a tile catalog's galaxies (0 for stars
    and empty slots) and the galaxy mask (N, Ht, Wt, M)."""
    p = GALAXY_PARAMS.by_name(cat["galaxy_params"].double().unbind(-1))
    g, _ = reduced_shear_and_magnification(cat["shear"].double(), cat["convergence"].double())
    g = torch.complex(g[..., 0], g[..., 1])[..., None]  # (N, Ht, Wt, 1): one g per tile
    frac, beta = p["disk_frac"], p["beta_radians"]
    eps = frac * _lensed(p["disk_q"], beta, g) + (1 - frac) * _lensed(p["bulge_q"], beta, g)
    is_gal = cat.is_on_mask & cat.galaxy_bools[..., 0]
    eps = torch.where(is_gal, eps, 0)
    return torch.stack([eps.real, eps.imag], dim=-1), is_gal


def cell_sums(cell: Tensor, values: Tensor, n_cells: int) -> tuple[Tensor, Tensor]:
    """Sums of ``values`` (K, 2) and counts per flat cell index ``cell`` (K,) in [0, n_cells)."""
    sums = torch.zeros((n_cells, values.shape[-1]), dtype=torch.float64)
    sums.index_add_(0, cell, values.double())
    return sums, torch.bincount(cell, minlength=n_cells)


def oracle_cell_sums(cat: TileCatalog, tiles_per_cell: int) -> tuple[Tensor, Tensor]:
    """Sums (N, Hc, Wc, 2) of the true galaxies' lensed ε per cell and their counts (N, Hc, Wc)."""
    eps, is_gal = catalog_ellipticities(cat)
    n, ht, wt = cat["n_sources"].shape
    hc, wc = ht // tiles_per_cell, wt // tiles_per_cell
    img, row, col, _ = is_gal.nonzero(as_tuple=True)
    cell = (img * hc + row // tiles_per_cell) * wc + col // tiles_per_cell
    sums, counts = cell_sums(cell, eps[is_gal], n * hc * wc)
    return sums.view(n, hc, wc, 2), counts.view(n, hc, wc)


def _stamps(image: np.ndarray, centre: np.ndarray, half: int):
    """Pixel values (K, S, S) around ``centre`` (K, 2) (row, col; 0 outside the image) and the
    offsets (K, S) of the pixel centres from the centre, rows and columns."""
    off = np.arange(-half, half + 1)
    rows = np.floor(centre[:, 0:1]).astype(np.int64) + off
    cols = np.floor(centre[:, 1:2]).astype(np.int64) + off
    pad = half + 3  # centres lie in the image or at most 2 px beyond it
    padded = np.pad(image, pad)
    stamp = padded[(rows + pad)[:, :, None], (cols + pad)[:, None, :]]
    return stamp, rows + 0.5 - centre[:, 0:1], cols + 0.5 - centre[:, 1:2]


def weighted_moments(
    image: np.ndarray, centres: np.ndarray, sigma_w: float = SIGMA_W, n_iter: int = 3
) -> np.ndarray:
    """Gaussian-weighted second moments (K, 2, 2) in (x, y), px², about the weighted centroid
    (iterated from ``centres`` (K, 2) row, col; moved at most 2 px); NaN where the weighted
    flux is not positive."""
    half = int(np.ceil(4 * sigma_w))
    start = np.asarray(centres, np.float64).reshape(-1, 2)
    centre = start.copy()
    for it in range(n_iter + 1):
        stamp, dy, dx = _stamps(image, centre, half)
        wy, wx = np.exp(-(dy**2) / (2 * sigma_w**2)), np.exp(-(dx**2) / (2 * sigma_w**2))
        wi = stamp * wy[:, :, None] * wx[:, None, :]
        norm = wi.sum((1, 2))
        good = norm > 0
        safe = np.where(good, norm, 1.0)
        my = (wi * dy[:, :, None]).sum((1, 2)) / safe
        mx = (wi * dx[:, None, :]).sum((1, 2)) / safe
        if it == n_iter:
            break
        step = np.stack([my, mx], axis=-1) * good[:, None]
        centre = start + np.clip(centre + step - start, -2.0, 2.0)
    dy, dx = dy - my[:, None], dx - mx[:, None]
    mxx = (wi * dx[:, None, :] ** 2).sum((1, 2)) / safe
    myy = (wi * dy[:, :, None] ** 2).sum((1, 2)) / safe
    mxy = (wi * dy[:, :, None] * dx[:, None, :]).sum((1, 2)) / safe
    out = np.stack([np.stack([mxx, mxy], -1), np.stack([mxy, myy], -1)], -2)
    return np.where(good[:, None, None], out, np.nan)


def deweighted(moments: np.ndarray, sigma_w: float = SIGMA_W) -> np.ndarray:
    """(M⁻¹ − W⁻¹)⁻¹: the covariance of a Gaussian whose weighted moments are ``moments``
    (K, 2, 2); NaN where that is not positive definite."""
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.linalg.inv(np.nan_to_num(moments, nan=1.0)) - np.eye(2) / sigma_w**2
        det = inv[:, 0, 0] * inv[:, 1, 1] - inv[:, 0, 1] ** 2
        ok = (det > 0) & (inv[:, 0, 0] > 0) & np.isfinite(moments).all((1, 2))
        cov = np.linalg.inv(np.where(ok[:, None, None], inv, np.eye(2)))
    return np.where(ok[:, None, None], cov, np.nan)


def ellipticity(cov: np.ndarray) -> np.ndarray:
    """ε (K, 2) of second-moment matrices (K, 2, 2) in (x, y)."""
    trace = cov[:, 0, 0] + cov[:, 1, 1]
    chi = np.stack([cov[:, 0, 0] - cov[:, 1, 1], 2 * cov[:, 0, 1]], -1) / trace[:, None]
    size = np.sqrt(np.clip(1 - (chi**2).sum(-1), 0.0, None))
    return chi / (1 + size)[:, None]


def moment_ellipticities(
    image: np.ndarray, centres: np.ndarray, psf_cov: np.ndarray, sigma_w: float = SIGMA_W
) -> tuple[np.ndarray, np.ndarray]:
    """PSF-corrected ε (K, 2) of the sources at ``centres`` (K, 2) in one band's ``image``, and
    which are usable (K,): positive-definite corrected moments larger than ``MIN_SIZE`` of the
    PSF's size (smaller ones are stars or noise)."""
    gal = deweighted(weighted_moments(image, centres, sigma_w), sigma_w) - psf_cov
    det = gal[:, 0, 0] * gal[:, 1, 1] - gal[:, 0, 1] ** 2
    trace = gal[:, 0, 0] + gal[:, 1, 1]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(det) & (det > 0) & (trace > MIN_SIZE * np.trace(psf_cov))
    eps = np.where(ok[:, None], ellipticity(np.where(ok[:, None, None], gal, np.eye(2))), 0.0)
    return eps, ok


def psf_covariance(render_cfg: RenderConfig, band: int = REF_BAND, sigma_w: float = SIGMA_W):
    """The PSF's covariance (2, 2), px², measured as :func:`moment_ellipticities` measures a
    source: weighted moments of a noise-free star at a pixel centre, then deweighted."""
    from hpc_bliss.simulate.render import Renderer  # rendering only needed here

    size = 2 * int(np.ceil(4 * sigma_w)) + 16
    centre = size / 2 + 0.5
    star = FullCatalog(
        size,
        size,
        {
            "n_sources": torch.tensor([1]),
            "plocs": torch.tensor([[[centre, centre]]]),
            "star_fluxes": torch.ones((1, 1, len(render_cfg.sky))),
        },
    )
    image = Renderer(render_cfg, size, size).noiseless(star)[0, band].double().numpy()
    cov = deweighted(weighted_moments(image, np.array([[centre, centre]]), sigma_w), sigma_w)
    return cov[0]
