"""GalSim rendering of the same catalogs, the way BLISS does it: one GalSim object per source
per band, drawn onto the image. The reference the tests and ``scripts/bench_render.py``
compare against; needs ``galsim`` (the ``test`` extra), imported only when called.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import RenderConfig
from hpc_bliss.io.schema import GALAXY_PARAMS
from hpc_bliss.simulate.lensing import reduced_shear_and_magnification
from hpc_bliss.simulate.psf import component_fluxes, psf_params


def _galsim() -> Any:
    try:
        import galsim
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the GalSim reference needs galsim: pip install 'hpc-bliss[test]'"
        ) from err
    return galsim


def galsim_psfs(cfg: RenderConfig) -> list[Any]:
    """The PSF of each band as a GalSim profile (pixel units): 2 Gaussians + truncated Moffat."""
    galsim = _galsim()
    params = psf_params(cfg.psf).double()
    frac = component_fluxes(params, cfg.psf.radius)
    psfs = []
    for b in range(params.shape[0]):
        s1, s2, _, sp, beta, _ = params[b].tolist()
        moffat = galsim.Moffat(
            beta=beta / 2,
            scale_radius=math.sqrt(beta) * sp,
            trunc=cfg.psf.radius,
            flux=float(frac[b, 2]),
        )
        psfs.append(
            galsim.Add(
                [
                    galsim.Gaussian(sigma=s1, flux=float(frac[b, 0])),
                    galsim.Gaussian(sigma=s2, flux=float(frac[b, 1])),
                    moffat,
                ]
            )
        )
    return psfs


def galsim_galaxy(
    params: list[float],
    pixel_scale: float,
    shear: tuple[float, float] = (0.0, 0.0),
    convergence: float = 0.0,
) -> Any:
    """Unit-flux bulge + disk galaxy (pixel units), lensed by (γ1, γ2) and κ, as BLISS builds it:
    each component's half-light radius is sqrt(a·b) = a·sqrt(q), sheared to axis ratio q."""
    galsim = _galsim()
    p = GALAXY_PARAMS.by_name(params)
    disk_frac, beta = p["disk_frac"], p["beta_radians"]
    parts = []
    for frac, q, a, cls in (
        (disk_frac, p["disk_q"], p["a_d"], galsim.Exponential),
        (1 - disk_frac, p["bulge_q"], p["a_b"], galsim.DeVaucouleurs),
    ):
        if frac > 0:
            hlr = a * math.sqrt(q) / pixel_scale
            parts.append(
                cls(flux=frac, half_light_radius=hlr).shear(q=q, beta=beta * galsim.radians)
            )
    gal = galsim.Add(parts) if len(parts) > 1 else parts[0]
    g, mu = reduced_shear_and_magnification(
        torch.tensor(shear, dtype=torch.float64), torch.tensor([convergence], dtype=torch.float64)
    )
    if shear != (0.0, 0.0) or convergence != 0.0:
        gal = gal.lens(float(g[0]), float(g[1]), float(mu[0]))
    return gal


def render_galsim(catalog: FullCatalog, cfg: RenderConfig) -> np.ndarray:
    """Noise-free images (N, B, H, W) in nanomaggies, drawn source by source with GalSim."""
    # method="fft": "auto" would pick a slow real-space convolution of the truncated Moffat
    # with the pixel (both have hard edges), ~300x slower for the same result; GalSim warns
    # about the hard edges, which is expected here (the filter lasts for this call only)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*both with hard edges.*")
        return _render(catalog, cfg)


def _render(catalog: FullCatalog, cfg: RenderConfig) -> np.ndarray:
    galsim = _galsim()
    psfs = galsim_psfs(cfg)
    h, w = catalog.height, catalog.width
    n_img = catalog.batch_size
    out = np.zeros((n_img, len(psfs), h, w))
    cat = catalog.to("cpu")
    for i in range(n_img):
        for s in range(int(cat["n_sources"][i])):
            row, col = cat["plocs"][i, s].tolist()
            if not (0 <= row < h and 0 <= col < w):
                continue
            is_gal = "source_type" in cat and int(cat["source_type"][i, s, 0]) == 1
            if is_gal:
                shear = tuple(cat["shear"][i, s].tolist()) if "shear" in cat else (0.0, 0.0)
                kappa = float(cat["convergence"][i, s, 0]) if "convergence" in cat else 0.0
                gal = galsim_galaxy(
                    cat["galaxy_params"][i, s].tolist(), cfg.pixel_scale, shear, kappa
                )
                fluxes = cat["galaxy_fluxes"][i, s].tolist()
            else:
                fluxes = cat["star_fluxes"][i, s].tolist()
            # GalSim's true centre of an even-sized image is our coordinate (H/2, W/2)
            offset = (col - w / 2, row - h / 2)
            for b, psf in enumerate(psfs):
                obj = galsim.Convolve(gal, psf) if is_gal else psf
                image = galsim.ImageD(w, h, scale=1.0)
                image.array[:] = out[i, b]
                obj.withFlux(fluxes[b] * (obj.flux if is_gal else 1.0)).drawImage(
                    image, offset=offset, method="fft", add_to_image=True
                )
                out[i, b] = image.array
    return out
