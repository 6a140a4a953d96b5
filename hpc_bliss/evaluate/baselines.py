"""Classical baseline: Source Extractor (SEP) detection and aperture photometry.

SEP thresholds the reference band at ``thresh`` times the per-pixel noise, keeps connected
regions of at least ``minarea`` pixels and deblends them into peaks; fluxes are circular
aperture sums. Conventions here:

* Images are sky-subtracted nanomaggies per pixel (``render.units = "nmgy"``); the noise per
  pixel is sqrt((sky + signal) / nelec_per_nmgy) nmgy. :func:`sep_catalog` passes SEP the sky
  part, sqrt(sky / nelec_per_nmgy), the usual detection threshold for faint sources.
* SEP places pixel centres at integer (x, y); ours are at half-integers (row, col) measured from
  the top-left corner, so ``row = y + 0.5`` and ``col = x + 0.5``.
* SEP does not separate stars from galaxies: the catalog has no ``source_type``, so every
  detection counts as a star (``FullCatalog.star_bools``), and ``star_fluxes`` (N, S, B) holds the
  reference-band aperture flux with the other bands zero (SEP measures one band here).
* A radius-3 px aperture holds only ~71% of the default SDSS-like PSF's light (its second
  Gaussian and power-law wings are wide): divide by :func:`psf_aperture_fraction` to get total
  fluxes (``aperture_correction``); with the default 1.0 fluxes are raw aperture sums.
* ``subtract_background`` (default False) lets ``sep.Background`` re-estimate a smooth sky. The
  images are already sky-subtracted with the true sky, so on isolated stars re-estimating only
  adds noise to the fluxes; in crowded fields it absorbs the field's own light too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sep
import torch
from torch import Tensor

from hpc_bliss.catalog import REF_BAND, FullCatalog
from hpc_bliss.config import RenderConfig


def _native(x: np.ndarray | Tensor) -> np.ndarray:
    """C-contiguous native-endian float64 copy-or-view that SEP accepts."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def sep_detect(
    image: np.ndarray | Tensor,
    sky_sigma: float | np.ndarray | Tensor,
    thresh: float = 1.5,
    minarea: int = 5,
    deblend_cont: float = 0.005,
    subtract_background: bool = False,
    aperture_radius: float = 3.0,
    aperture_correction: float = 1.0,
    bkg_box: int = 32,
) -> dict[str, np.ndarray]:
    """Detect sources in one sky-subtracted (H, W) image with SEP.

    ``sky_sigma`` is the per-pixel noise in the image's units (scalar or (H, W)); ``thresh`` is
    in units of it. Returns ``plocs`` (K, 2) float64 (row, col) in our pixel convention, ``flux``
    (K,) the sum in a circle of ``aperture_radius`` px divided by ``aperture_correction``,
    ``flux_err`` (K,) its noise from ``sky_sigma`` (likewise corrected), and ``npix`` (K,).
    """
    data = _native(image)
    err = float(sky_sigma) if np.ndim(sky_sigma) == 0 else _native(sky_sigma)  # type: ignore[arg-type]
    if subtract_background:
        data = data - sep.Background(data, bw=bkg_box, bh=bkg_box).back()
    try:
        objs = sep.extract(data, thresh, err=err, minarea=minarea, deblend_cont=deblend_cont)
    except Exception as exc:  # crowded fields can overflow SEP's buffers: raise them once
        if "limit" not in str(exc):
            raise
        sep.set_extract_pixstack(max(sep.get_extract_pixstack(), 10 * data.size))
        sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 8192))
        objs = sep.extract(data, thresh, err=err, minarea=minarea, deblend_cont=deblend_cont)
    x, y = np.asarray(objs["x"], np.float64), np.asarray(objs["y"], np.float64)
    if len(x):
        flux, flux_err, _ = sep.sum_circle(data, x, y, aperture_radius, err=err)
    else:
        flux = flux_err = np.zeros(0)
    return {
        "plocs": np.stack([y + 0.5, x + 0.5], axis=-1).reshape(-1, 2),
        "flux": np.asarray(flux, np.float64) / aperture_correction,
        "flux_err": np.asarray(flux_err, np.float64) / aperture_correction,
        "npix": np.asarray(objs["npix"], np.int64),
    }


def sep_catalog(
    images: np.ndarray | Tensor,
    background: np.ndarray | Tensor,
    nelec_per_nmgy: list[float],
    band: int = REF_BAND,
    **kw: Any,
) -> FullCatalog:
    """SEP detections of a batch of sky-subtracted nmgy images (N, B, H, W) as a FullCatalog.

    ``background`` (N, B) is the subtracted sky in nmgy per pixel; the noise given to SEP is
    sqrt(background / nelec_per_nmgy) in ``band``. ``kw`` goes to :func:`sep_detect`. Keys:
    ``n_sources`` (N,), ``plocs`` (N, S, 2), ``star_fluxes`` (N, S, B) with the ``band`` aperture
    flux (other bands 0), S = max(1, most detections in an image). No ``source_type``: all stars.
    """
    imgs = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    bkg = _native(background)
    if imgs.ndim != 4 or bkg.shape != imgs.shape[:2]:
        raise ValueError(
            f"expected images (N, B, H, W) and background (N, B), got {imgs.shape} and {bkg.shape}"
        )
    n, n_bands, h, w = imgs.shape
    gain = float(nelec_per_nmgy[band])
    sigma = np.sqrt(np.clip(bkg[:, band], 0.0, None) / gain)
    dets = [sep_detect(imgs[i, band], float(sigma[i]), **kw) for i in range(n)]
    slots = max([1, *(len(d["flux"]) for d in dets)])
    plocs = torch.zeros((n, slots, 2), dtype=torch.float32)
    fluxes = torch.zeros((n, slots, n_bands), dtype=torch.float32)
    for i, d in enumerate(dets):
        k = len(d["flux"])
        plocs[i, :k] = torch.from_numpy(d["plocs"]).float()
        fluxes[i, :k, band] = torch.from_numpy(d["flux"]).float()
    counts = torch.tensor([len(d["flux"]) for d in dets], dtype=torch.int64)
    return FullCatalog(h, w, {"n_sources": counts, "plocs": plocs, "star_fluxes": fluxes})


def sep_tile_counts(cat: FullCatalog, tile_slen: int) -> Tensor:
    """Detections per tile (N, H/tile_slen, W/tile_slen) int64, without any per-tile cap.

    Tile = floor(plocs / tile_slen); detections outside the image (or non-finite) are dropped.
    """
    h, w = cat.height, cat.width
    if tile_slen < 1 or h % tile_slen or w % tile_slen:
        raise ValueError(f"tile_slen {tile_slen} does not divide the {h}x{w} image")
    ht, wt = h // tile_slen, w // tile_slen
    plocs = cat["plocs"].detach().cpu().double()
    rows, cols = plocs[..., 0], plocs[..., 1]
    keep = cat.is_on_mask.cpu() & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    img = torch.arange(cat.batch_size)[:, None].expand_as(keep)[keep]
    tr = torch.div(rows[keep], tile_slen, rounding_mode="floor").long().clamp(0, ht - 1)
    tc = torch.div(cols[keep], tile_slen, rounding_mode="floor").long().clamp(0, wt - 1)
    flat = (img * ht + tr) * wt + tc
    return torch.bincount(flat, minlength=cat.batch_size * ht * wt).view(cat.batch_size, ht, wt)


def psf_aperture_fraction(
    render_cfg: RenderConfig, radius: float = 3.0, band: int = REF_BAND
) -> float:
    """Fraction of a point source's flux inside a circle of ``radius`` px (noise-free render)."""
    from hpc_bliss.simulate.render import Renderer  # rendering only needed here

    size = 2 * int(np.ceil(radius)) + 32
    centre = size / 2 + 0.5  # a pixel centre: the aperture is centred like on a detection
    star = FullCatalog(
        size,
        size,
        {
            "n_sources": torch.tensor([1]),
            "plocs": torch.tensor([[[centre, centre]]]),
            "star_fluxes": torch.ones((1, 1, len(render_cfg.sky))),
        },
    )
    img = _native(Renderer(render_cfg, size, size).noiseless(star)[0, band])
    frac, _, _ = sep.sum_circle(img, np.array([centre - 0.5]), np.array([centre - 0.5]), radius)
    return float(frac[0])
