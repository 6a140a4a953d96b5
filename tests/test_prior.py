import math

import pytest
import torch

from hpc_bliss.config import load_config
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.prior import sample_prior
from hpc_bliss.simulate.sampling import standard_gamma, truncated_pareto
from tests.conftest import CONFIGS


def _sample(name, n, seed=0, overrides=()):
    cfg = load_config(CONFIGS / f"{name}.yaml", list(overrides))
    return cfg, sample_prior(cfg.prior, n, make_generator(seed, "test"))


def test_shapes_and_dtypes_of_every_key():
    cfg, cat = _sample("m2", 4)
    n, ht, wt, m, b = 4, 56, 56, 5, 5
    expected = {
        "n_sources": ((n, ht, wt), torch.int64),
        "locs": ((n, ht, wt, m, 2), torch.float32),
        "source_type": ((n, ht, wt, m, 1), torch.int64),
        "star_fluxes": ((n, ht, wt, m, b), torch.float32),
        "galaxy_fluxes": ((n, ht, wt, m, b), torch.float32),
        "galaxy_params": ((n, ht, wt, m, 6), torch.float32),
        "shear": ((n, ht, wt, 2), torch.float32),
        "convergence": ((n, ht, wt, 1), torch.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert cat[key].shape == shape, key
        assert cat[key].dtype == dtype, key
    on = cat.is_on_mask
    assert (cat["locs"][~on] == 0).all() and (cat["star_fluxes"][~on] == 0).all()
    assert ((cat["locs"] >= 0) & (cat["locs"] < 1)).all()


def test_m2_counts_and_flux_law():
    cfg, cat = _sample("m2", 32)
    n = cat["n_sources"].float()
    # Poisson(0.48) clipped at 5: the clipping removes a negligible 4e-5 of the mean
    assert abs(n.mean().item() - 0.48) < 0.01
    assert n.max() <= 5 and (cat["source_type"] == 0).all()
    flux = cat["star_fluxes"][..., 2][cat.is_on_mask]
    law = cfg.prior.star_flux
    assert flux.min() >= law.min and flux.max() <= law.max
    # survival function of the truncated power law at 4·min and 100·min
    for mult in (4.0, 100.0):
        x = law.min * mult
        expected = ((law.min / x) ** law.alpha - (law.min / law.max) ** law.alpha) / (
            1 - (law.min / law.max) ** law.alpha
        )
        assert abs((flux > x).float().mean().item() - expected) < 0.01
    # colours: u is fainter than r by the configured mean magnitude offset
    ratio = cat["star_fluxes"][..., 0][cat.is_on_mask] / flux
    mean_du = (-2.5 * torch.log10(ratio)).mean().item()
    assert abs(mean_du - cfg.prior.star_color_mean[0]) < 0.02


def test_galaxy_fraction_params_and_lensing():
    cfg, cat = _sample("galaxies", 200)
    on = cat.is_on_mask
    gal = cat.galaxy_bools[..., 0]
    assert abs(gal.sum().item() / on.sum().item() - cfg.prior.prob_galaxy) < 0.02
    params = cat["galaxy_params"][gal]
    disk_frac, beta, disk_q, a_d, bulge_q, a_b = params.unbind(-1)
    assert (disk_frac >= 0).all() and (disk_frac <= 1).all()
    assert (beta >= 0).all() and (beta <= math.pi).all()
    assert (disk_q >= cfg.prior.galaxy_q_min).all() and (disk_q <= 1).all()
    p = cfg.prior
    mean_a = p.galaxy_a_loc + p.galaxy_a_scale * p.galaxy_a_concentration
    assert abs(a_d.mean().item() - mean_a) / mean_a < 0.03
    torch.testing.assert_close(a_b, a_d / p.galaxy_a_bd_ratio)
    # stars carry no galaxy flux, galaxies no star flux
    assert (cat["galaxy_fluxes"][~gal] == 0).all()
    assert (cat["star_fluxes"][gal] == 0).all()
    assert cat["shear"].abs().max() > 0 and cat["convergence"].abs().max() > 0


def test_same_seed_same_catalog_different_seed_differs():
    _, a = _sample("galaxies", 8, seed=1)
    _, b = _sample("galaxies", 8, seed=1)
    _, c = _sample("galaxies", 8, seed=2)
    for key in a.keys():
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["locs"], c["locs"])


def test_gamma_sampler_moments():
    gen = torch.Generator().manual_seed(0)
    for conc in (0.4, 1.5, 5.0):
        x = standard_gamma((200_000,), conc, gen)
        assert abs(x.mean().item() - conc) / conc < 0.02
        assert abs(x.var().item() - conc) / conc < 0.05


def test_truncated_pareto_bounds():
    gen = torch.Generator().manual_seed(0)
    x = truncated_pareto((100_000,), 0.5, 1.0, 10.0, gen)
    assert x.min() >= 1.0 and x.max() <= 10.0
    # median of the truncated law: solve F(x) = 1/2
    span = 1 - 0.1**0.5
    median = (1 - 0.5 * span) ** (-2.0)
    assert abs(x.median().item() - median) < 0.03


@pytest.mark.parametrize("name", ["smoke", "galaxies"])
def test_prior_runs_on_meta_shapes(name):
    cfg, cat = _sample(name, 2)
    assert cat.n_tiles_h == cfg.prior.n_tiles_h and cat.n_tiles_w == cfg.prior.n_tiles_w
