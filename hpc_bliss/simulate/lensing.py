"""Weak-lensing fields on the tile grid: convergence κ and shear (γ1, γ2).

κ is a Gaussian random field with power spectrum P(k) ∝ k^-index (k in cycles per tile,
the k = 0 mode removed), scaled so its variance over the grid is ``power_amplitude``; the
shear follows from κ by the Kaiser–Squires relations γ̂1 = (kx² − ky²)/k² κ̂ and
γ̂2 = 2 kx ky / k² κ̂, so the three fields are physically consistent. A constant per image
(γ1, γ2, κ) is added; with ``power_amplitude = 0`` that constant is the whole field.

Axes follow GalSim: x is the column (width) axis, y the row axis; γ1 > 0 stretches along x.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_bliss.config import LensingConfig


def _spectrum_filters(ht: int, wt: int, index: float, device: torch.device | str):
    ky = torch.fft.fftfreq(ht, device=device)[:, None]
    kx = torch.fft.fftfreq(wt, device=device)[None, :]
    k2 = kx**2 + ky**2
    safe = torch.where(k2 > 0, k2, torch.ones_like(k2))
    # no power at k = 0 (the per-image constant plays that role) nor on Nyquist rows/columns,
    # whose shear filters are not Hermitian-symmetric and would leak into imaginary parts
    keep = (k2 > 0) & (kx.abs() < 0.5) & (ky.abs() < 0.5)
    spectrum = torch.where(keep, safe ** (-index / 2), torch.zeros_like(k2))
    if ht * wt > 1:
        spectrum = spectrum / spectrum.mean()
    g1 = torch.where(k2 > 0, (kx**2 - ky**2) / safe, torch.zeros_like(k2))
    g2 = torch.where(k2 > 0, 2 * kx * ky / safe, torch.zeros_like(k2))
    return spectrum, g1, g2


def sample_lensing_fields(
    cfg: LensingConfig,
    n_images: int,
    n_tiles_h: int,
    n_tiles_w: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Return ``shear`` (N, Ht, Wt, 2) and ``convergence`` (N, Ht, Wt, 1), dimensionless."""
    shape = (n_images, n_tiles_h, n_tiles_w)
    if not cfg.enabled:
        return torch.zeros(*shape, 2, device=device), torch.zeros(*shape, 1, device=device)
    white = torch.randn(shape, generator=generator, device=device)
    const = torch.randn((n_images, 3), generator=generator, device=device)
    spectrum, f1, f2 = _spectrum_filters(n_tiles_h, n_tiles_w, cfg.power_index, device)
    kappa_hat = torch.fft.fft2(white) * torch.sqrt(spectrum * cfg.power_amplitude)
    kappa = torch.fft.ifft2(kappa_hat).real
    gamma1 = torch.fft.ifft2(kappa_hat * f1).real
    gamma2 = torch.fft.ifft2(kappa_hat * f2).real
    gamma1 = gamma1 + cfg.constant_shear_std * const[:, 0, None, None]
    gamma2 = gamma2 + cfg.constant_shear_std * const[:, 1, None, None]
    kappa = kappa + cfg.constant_convergence_std * const[:, 2, None, None]
    shear = torch.stack([gamma1, gamma2], dim=-1)
    norm = shear.norm(dim=-1, keepdim=True)
    shear = shear * (cfg.max_abs / norm.clamp_min(cfg.max_abs)).clamp(max=1.0)
    kappa = kappa.clamp(-cfg.max_abs, cfg.max_abs)
    return shear, kappa[..., None]


def reduced_shear_and_magnification(shear: Tensor, convergence: Tensor) -> tuple[Tensor, Tensor]:
    """g = γ / (1 − κ) with shape (..., 2) and μ = 1 / ((1 − κ)² − |γ|²) with shape (..., 1)."""
    one_minus = 1.0 - convergence
    g = shear / one_minus
    mu = 1.0 / (one_minus**2 - (shear**2).sum(-1, keepdim=True))
    return g, mu
