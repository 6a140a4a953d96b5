"""The prior over tile catalogs: counts, positions, types, fluxes, shapes and lensing fields.

Everything is drawn in one batch on any torch device from an explicit generator; the same
(config, generator seed, device type) gives the same catalog.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.config import PowerLawFlux, PriorConfig
from hpc_bliss.io.schema import GALAXY_PARAM_NAMES
from hpc_bliss.simulate.lensing import sample_lensing_fields
from hpc_bliss.simulate.sampling import standard_gamma, truncated_pareto


def _fluxes(
    law: PowerLawFlux,
    color_mean: list[float],
    color_std: list[float],
    ref: int,
    shape: tuple[int, ...],
    gen: torch.Generator,
    device: torch.device | str,
) -> Tensor:
    """Reference-band flux from the power law, other bands from Gaussian colours (magnitudes
    relative to the reference band): f_b = f_ref · 10^(-0.4 Δm_b). Shape (*shape, B)."""
    ref_flux = truncated_pareto(shape, law.alpha, law.min, law.max, gen, device)
    mean = torch.tensor(color_mean, device=device)
    std = torch.tensor(color_std, device=device)
    dmag = mean + std * torch.randn((*shape, len(color_mean)), generator=gen, device=device)
    dmag[..., ref] = 0.0
    return ref_flux[..., None] * 10.0 ** (-0.4 * dmag)


def _galaxy_params(
    cfg: PriorConfig, shape: tuple[int, ...], gen: torch.Generator, device: torch.device | str
) -> Tensor:
    """Galaxy params (*shape, 6), in the order of :data:`GALAXY_PARAM_NAMES`."""
    u = torch.rand((*shape, 4), generator=gen, device=device)
    p = {"disk_frac": u[..., 0], "beta_radians": torch.pi * u[..., 1]}
    p["disk_q"] = cfg.galaxy_q_min + (1.0 - cfg.galaxy_q_min) * u[..., 2]
    p["bulge_q"] = cfg.galaxy_q_min + (1.0 - cfg.galaxy_q_min) * u[..., 3]
    gamma = standard_gamma(shape, cfg.galaxy_a_concentration, gen, device)
    p["a_d"] = cfg.galaxy_a_loc + cfg.galaxy_a_scale * gamma
    p["a_b"] = p["a_d"] / cfg.galaxy_a_bd_ratio
    return torch.stack([p[name] for name in GALAXY_PARAM_NAMES], dim=-1)


def _scattered_fluxes(
    law: PowerLawFlux,
    color_mean: list[float],
    color_std: list[float],
    cfg: PriorConfig,
    mask: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Fluxes (*mask.shape, B) drawn for the slots of ``mask`` (in row-major slot order), zero
    elsewhere."""
    out = torch.zeros((*mask.shape, len(cfg.bands)), device=mask.device)
    shape = (int(mask.sum()),)
    out[mask] = _fluxes(
        law, color_mean, color_std, cfg.reference_band, shape, generator, mask.device
    )
    return out


def sample_prior(
    cfg: PriorConfig,
    n_images: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> TileCatalog:
    """Sample ``n_images`` tile catalogs.

    Counts are Poisson(``mean_sources``) per tile clipped at ``max_sources``; locations are
    uniform in the tile; each source is a galaxy with probability ``prob_galaxy``; fluxes are
    in nanomaggies; galaxy sizes (a_d, a_b) are semi-major half-light radii in arcsec.
    """
    ht, wt, m, nb = cfg.n_tiles_h, cfg.n_tiles_w, cfg.max_sources, len(cfg.bands)
    tiles = (n_images, ht, wt)
    slots = (*tiles, m)
    rate = torch.full(tiles, float(cfg.mean_sources), device=device)
    n_sources = torch.poisson(rate, generator=generator).clamp(max=m).long()
    on = torch.arange(m, device=device) < n_sources[..., None]
    # per-source values are drawn for active slots only (in row-major slot order) and
    # scattered into the zero-filled tensors, so inactive slots stay zero by construction
    n_on = int(on.sum())
    locs = torch.zeros((*slots, 2), device=device)
    locs[on] = torch.rand((n_on, 2), generator=generator, device=device)
    is_gal = torch.zeros(slots, dtype=torch.bool, device=device)
    if cfg.prob_galaxy > 0:
        is_gal[on] = torch.rand((n_on,), generator=generator, device=device) < cfg.prob_galaxy
    is_star = on & ~is_gal
    star_fluxes = _scattered_fluxes(
        cfg.star_flux, cfg.star_color_mean, cfg.star_color_std, cfg, is_star, generator
    )
    galaxy_fluxes = torch.zeros((*slots, nb), device=device)
    galaxy_params = torch.zeros((*slots, len(GALAXY_PARAM_NAMES)), device=device)
    n_gal = int(is_gal.sum())
    if n_gal:
        galaxy_fluxes = _scattered_fluxes(
            cfg.galaxy_flux, cfg.galaxy_color_mean, cfg.galaxy_color_std, cfg, is_gal, generator
        )
        galaxy_params[is_gal] = _galaxy_params(cfg, (n_gal,), generator, device)
    data = {
        "n_sources": n_sources,
        "locs": locs,
        "source_type": is_gal.long()[..., None],
        "star_fluxes": star_fluxes,
        "galaxy_fluxes": galaxy_fluxes,
        "galaxy_params": galaxy_params,
    }
    shear, convergence = sample_lensing_fields(cfg.lensing, n_images, ht, wt, generator, device)
    data["shear"] = shear
    data["convergence"] = convergence
    return TileCatalog(cfg.tile_slen, data)
