"""The SDSS-style PSF: two Gaussians plus power-law (Moffat) wings, pixelised exactly.

Per band, with r in pixels:

    profile(r) = exp(-r²/2σ1²) + b·exp(-r²/2σ2²) + p0·(1 + r²/(β σp²))^(-β/2)

truncated at ``radius`` and normalised to unit flux. The wing term is a Moffat profile with
index β/2 and scale radius sqrt(β)·σp, so the whole PSF is, in GalSim's terms,
``Gaussian(σ1) + Gaussian(σ2) + Moffat(β/2, sqrt(β)σp, trunc=radius)`` with the flux
fractions :func:`component_fluxes` returns. The renderer applies this profile itself (its
pixel-integrated image, in Fourier space), not a coarse Gaussian-mixture fit of it.

``params`` tensors have shape (B, 6) in the order of ``PSF_KEYS``: σ1, σ2, b, σp, β, p0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hpc_bliss.config import PSF_KEYS, PsfConfig


def psf_params(cfg: PsfConfig, device: torch.device | str = "cpu") -> Tensor:
    """The per-band parameters as a (B, 6) float32 tensor (columns in ``PSF_KEYS`` order)."""
    cols = [torch.tensor(list(getattr(cfg, k)), dtype=torch.float64) for k in PSF_KEYS]
    return torch.stack(cols, dim=-1).to(device=device, dtype=torch.float32)


def component_fluxes(params: Tensor, radius: float) -> Tensor:
    """Flux fractions (B, 3) of the two Gaussians and the truncated Moffat wings."""
    p = params.double()
    s1, s2, b, sp, beta, p0 = p.unbind(-1)
    m_beta = beta / 2
    rd2 = beta * sp**2
    f1 = 2 * math.pi * s1**2
    f2 = b * 2 * math.pi * s2**2
    kept = 1 - (1 + radius**2 / rd2) ** (1 - m_beta)
    fp = p0 * math.pi * rd2 / (m_beta - 1) * kept
    total = f1 + f2 + fp
    return torch.stack([f1, f2, fp], dim=-1) / total[:, None]


def _gauss_pixel_integral(edges: Tensor, sigma: Tensor) -> Tensor:
    """∫ of a unit-flux 1-D Gaussian over each pixel: edges (P+1,), sigma (B,) → (B, P)."""
    cdf = 0.5 * (1 + torch.erf(edges[None, :] / (sigma[:, None] * math.sqrt(2))))
    return cdf[:, 1:] - cdf[:, :-1]


def psf_image(params: Tensor, size: int, radius: float, oversample: int = 7) -> Tensor:
    """Pixel-integrated PSF on a ``size``×``size`` stamp centred on pixel ``size // 2``.

    Gaussians are integrated exactly (erf); the Moffat wings, which are smooth, by the midpoint
    rule on ``oversample``² sub-pixels, truncated at ``radius`` pixels. Returns (B, size, size)
    float64 summing to the flux inside the stamp (1 when the stamp holds the whole radius).
    """
    p = params.double()
    s1, s2, _, sp, beta, _ = p.unbind(-1)
    frac = component_fluxes(params, radius)
    centre = size // 2
    edges = torch.arange(size + 1, dtype=torch.float64) - centre - 0.5
    g1 = _gauss_pixel_integral(edges, s1)
    g2 = _gauss_pixel_integral(edges, s2)
    img = frac[:, 0, None, None] * g1[:, :, None] * g1[:, None, :]
    img = img + frac[:, 1, None, None] * g2[:, :, None] * g2[:, None, :]
    sub = (torch.arange(size * oversample, dtype=torch.float64) + 0.5) / oversample - centre - 0.5
    r2 = sub[:, None] ** 2 + sub[None, :] ** 2
    m_beta = (beta / 2)[:, None, None]
    rd2 = (beta * sp**2)[:, None, None]
    moffat = (1 + r2[None] / rd2) ** (-m_beta) * (r2[None] <= radius**2)
    moffat = moffat * (m_beta - 1) / (math.pi * rd2 * (1 - (1 + radius**2 / rd2) ** (1 - m_beta)))
    moffat = moffat.reshape(-1, size, oversample, size, oversample).mean(dim=(2, 4))
    return img + frac[:, 2, None, None] * moffat


def psf_fourier(params: Tensor, grid_h: int, grid_w: int, radius: float) -> Tensor:
    """rfft2 of the pixelised PSF placed with its centre on pixel (0, 0) of a periodic
    ``grid_h``×``grid_w`` grid: complex (B, grid_h, grid_w // 2 + 1)."""
    half = int(math.ceil(radius)) + 1
    size = 2 * half + 1
    if size > min(grid_h, grid_w):
        raise ValueError(
            f"PSF radius {radius} px needs a grid of at least {size} px, got {grid_h}×{grid_w}"
        )
    stamp = psf_image(params, size, radius)
    grid = torch.zeros((stamp.shape[0], grid_h, grid_w), dtype=torch.float64)
    grid[:, :size, :size] = stamp
    grid = torch.roll(grid, shifts=(-half, -half), dims=(1, 2))
    return torch.fft.rfft2(grid)
