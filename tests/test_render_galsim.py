"""hpc-bliss's renderer against GalSim, the reference, on the same sources and PSF."""

import math

import numpy as np
import pytest
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import RenderConfig, load_config
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.prior import sample_prior
from hpc_bliss.simulate.reference import render_galsim
from hpc_bliss.simulate.render import Renderer
from hpc_bliss.simulate.sampling import standard_gamma
from tests.conftest import CONFIGS

pytestmark = pytest.mark.galsim
SIZE = 96
FLUX = [3.0, 8.0, 20.0, 25.0, 30.0]


def _one_source(params=None, shear=(0.0, 0.0), kappa=0.0, ploc=(47.3, 48.6), dtype=torch.float64):
    is_gal = params is not None
    data = {
        "n_sources": torch.tensor([1]),
        "plocs": torch.tensor([[ploc]], dtype=dtype),
        "source_type": torch.tensor([[[int(is_gal)]]]),
        "star_fluxes": torch.tensor([[FLUX if not is_gal else [0.0] * 5]], dtype=dtype),
        "galaxy_fluxes": torch.tensor([[FLUX if is_gal else [0.0] * 5]], dtype=dtype),
        "galaxy_params": torch.tensor([[params or [0.0] * 6]], dtype=dtype),
        "shear": torch.tensor([[shear]], dtype=dtype),
        "convergence": torch.tensor([[[kappa]]], dtype=dtype),
    }
    return FullCatalog(SIZE, SIZE, data)


def _a90():
    """90th percentile of the galaxies config's disk size a_d, arcsec."""
    p = load_config(CONFIGS / "galaxies.yaml").prior
    g = standard_gamma((200_000,), p.galaxy_a_concentration, torch.Generator().manual_seed(0))
    return float(p.galaxy_a_loc + p.galaxy_a_scale * torch.quantile(g, 0.9))


CASES = {
    "star": (None, {}, 0.005),
    "round disk": ([1.0, 0.3, 1.0, 1.2, 1.0, 0.5], {}, 0.005),
    "edge-on disk": ([1.0, 0.7, 0.15, 1.5, 1.0, 0.5], {}, 0.005),
    "compact bulge": ([0.0, 1.1, 1.0, 0.5, 0.8, 0.2], {}, 0.005),
    "bulge + disk": ([0.6, 2.0, 0.5, 1.4, 0.7, 0.6], {}, 0.005),
    "bulge-dominated": ([0.2, 0.4, 0.8, 2.0, 0.6, 1.0], {}, 0.005),
    "large (prior 90th percentile)": ([0.7, 0.9, 0.6, "a90", 0.8, "a90/2"], {}, 0.01),
    "lensed": ([0.8, 0.5, 0.6, 1.2, 0.9, 0.5], {"shear": (0.05, -0.03), "kappa": 0.04}, 0.005),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_source_matches_galsim(case):
    params, lens, flux_tol = CASES[case]
    if params is not None:
        a90 = _a90()
        params = [a90 if p == "a90" else a90 / 2 if p == "a90/2" else p for p in params]
    cat = _one_source(params, **lens)
    cfg = RenderConfig(pad=24)
    f32 = _one_source(params, **lens, dtype=torch.float32)
    ours = Renderer(cfg, SIZE, SIZE).noiseless(f32)[0].double().numpy()
    ref = render_galsim(cat, cfg)[0]
    for b in range(5):
        peak = ref[b].max()
        err = np.abs(ours[b] - ref[b]).max() / peak
        assert err <= 0.01, f"{case}, band {b}: max |diff| = {err:.4f} of the peak"
        assert abs(ours[b].sum() / ref[b].sum() - 1) <= flux_tol, f"{case}, band {b}: flux"
    # the image holds the whole source (lensed sources are magnified by μ)
    if flux_tol == 0.005:
        kappa, shear = lens.get("kappa", 0.0), lens.get("shear", (0.0, 0.0))
        mu = 1 / ((1 - kappa) ** 2 - shear[0] ** 2 - shear[1] ** 2)
        assert abs(ours.sum(axis=(1, 2)) / (mu * np.array(FLUX)) - 1).max() <= 0.005


def _moments(img):
    rows = np.arange(img.shape[0]) + 0.5
    total = img.sum()
    r = (img.sum(1) * rows).sum() / total
    c = (img.sum(0) * rows).sum() / total
    dr, dc = rows[:, None] - r, rows[None, :] - c
    return np.array([(img * dc**2).sum(), (img * dr**2).sum(), (img * dr * dc).sum()]) / total


def test_sheared_round_galaxy_ellipticity_equals_reduced_shear():
    """Unweighted moments add under convolution: galaxy = image − PSF (both pixelised)."""
    shear, kappa = (0.06, -0.04), 0.05
    g_true = np.array(shear) / (1 - kappa)
    params = [1.0, 0.0, 1.0, 0.6, 1.0, 0.3]  # round exponential disk
    cfg = RenderConfig(pad=32)
    renderer = Renderer(cfg, SIZE, SIZE)
    img = renderer.noiseless(_one_source(params, shear, kappa, (48.0, 48.0), torch.float32))[0, 2]
    psf = renderer.noiseless(_one_source(None, ploc=(48.0, 48.0), dtype=torch.float32))[0, 2]
    ixx, iyy, ixy = _moments(img.double().numpy()) - _moments(psf.double().numpy() / FLUX[2])
    e = np.array([ixx - iyy, 2 * ixy]) / (ixx + iyy)
    g = e / (1 + math.sqrt(1 - (e**2).sum()))
    assert np.abs(g - g_true).max() < 1e-3, (g, g_true)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["m2", "galaxies"])
def test_whole_scene_rms_within_half_sigma_of_noise(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    cat = sample_prior(cfg.prior, 1, make_generator(1, "scene")).to_full_catalog()
    ours = Renderer(cfg.render, cfg.prior.image_height, cfg.prior.image_width).noiseless(cat)
    ref = render_galsim(cat, cfg.render)[0]
    sigma = np.sqrt(np.array(cfg.render.sky) / np.array(cfg.render.nelec_per_nmgy))
    rms = np.sqrt(((ours[0].double().numpy() - ref) ** 2).mean(axis=(1, 2)))
    n = int(cat["n_sources"][0])
    print(f"{name}: {n} sources, RMS/σ per band = {np.round(rms / sigma, 5)}")
    assert (rms <= 0.5 * sigma).all(), rms / sigma
