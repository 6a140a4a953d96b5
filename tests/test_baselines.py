"""SEP baseline: positions, aperture fluxes, per-tile counts and the FullCatalog it returns."""

from __future__ import annotations

import numpy as np
import pytest
import sep
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import RenderConfig
from hpc_bliss.evaluate.baselines import (
    psf_aperture_fraction,
    sep_catalog,
    sep_detect,
    sep_tile_counts,
)
from hpc_bliss.simulate.render import Renderer

H = W = 64
PLOCS = torch.tensor(
    [[10.3, 12.7], [11.1, 40.2], [30.6, 25.5], [33.2, 52.8], [52.4, 10.9], [50.7, 38.1]]
)
FLUXES = torch.tensor([50.0, 80.0, 120.0, 150.0, 200.0, 100.0])


def _stars(n_images: int = 1) -> FullCatalog:
    fluxes = FLUXES[None, :, None].expand(n_images, -1, 5).contiguous()
    return FullCatalog(
        H,
        W,
        {
            "n_sources": torch.full((n_images,), len(FLUXES), dtype=torch.int64),
            "plocs": PLOCS[None].expand(n_images, -1, -1).contiguous(),
            "star_fluxes": fluxes,
        },
    )


@pytest.fixture(scope="module")
def rendered():
    cfg = RenderConfig()
    batch = Renderer(cfg, H, W).render(_stars(2), torch.Generator().manual_seed(0))
    return cfg, batch


def _sigma(cfg: RenderConfig, batch, i: int = 0) -> float:
    return float(np.sqrt(batch.background[i, 2].item() / cfg.nelec_per_nmgy[2]))


def test_isolated_stars_positions_and_fluxes(rendered):
    cfg, batch = rendered
    corr = psf_aperture_fraction(cfg, radius=3.0)
    assert 0.65 < corr < 0.75  # wide PSF wings: a 3 px aperture misses ~30% of the light
    det = sep_detect(batch.images[0, 2], _sigma(cfg, batch), aperture_correction=corr)
    assert det["plocs"].shape == (6, 2) and det["flux"].shape == (6,)
    dist = np.linalg.norm(det["plocs"][:, None] - PLOCS.numpy()[None], axis=-1)
    nearest = dist.argmin(0)
    assert sorted(nearest.tolist()) == list(range(6))  # one detection per star, none spurious
    assert dist.min(0).max() < 0.3
    rel = det["flux"][nearest] / FLUXES.numpy() - 1
    assert np.abs(rel).max() < 0.1
    # without the correction, fluxes are raw aperture sums (~70% of the total)
    raw = sep_detect(batch.images[0, 2].numpy().astype(">f4"), _sigma(cfg, batch))
    np.testing.assert_allclose(raw["flux"] / corr, det["flux"], rtol=1e-6)


def test_background_subtraction_option(rendered):
    cfg, batch = rendered
    det = sep_detect(batch.images[0, 2], _sigma(cfg, batch), subtract_background=True)
    dist = np.linalg.norm(det["plocs"][:, None] - PLOCS.numpy()[None], axis=-1)
    assert len(det["flux"]) == 6 and dist.min(0).max() < 0.3


def test_noise_only_image_has_few_detections():
    cfg = RenderConfig()
    empty = FullCatalog(
        H, W, {"n_sources": torch.zeros(4, dtype=torch.int64), "plocs": torch.zeros(4, 1, 2)}
    )
    batch = Renderer(cfg, H, W).render(empty, torch.Generator().manual_seed(3))
    cat = sep_catalog(batch.images, batch.background, cfg.nelec_per_nmgy, thresh=3.0)
    assert int(cat["n_sources"].sum()) <= 1
    assert cat.max_sources >= 1  # an all-empty batch still has one (inactive) slot


def test_sep_catalog_batch(rendered):
    cfg, batch = rendered
    cat = sep_catalog(batch.images, batch.background, cfg.nelec_per_nmgy)
    assert isinstance(cat, FullCatalog) and (cat.height, cat.width) == (H, W)
    assert cat["n_sources"].tolist() == [6, 6]
    assert cat["plocs"].shape == (2, 6, 2) and cat["star_fluxes"].shape == (2, 6, 5)
    assert "source_type" not in cat and bool(cat.star_bools.all())
    other = [0, 1, 3, 4]
    assert bool((cat["star_fluxes"][..., other] == 0).all())
    assert bool((cat["star_fluxes"][..., 2] > 0).all())
    tiles = cat.to_tile_catalog(16, max_sources=8)
    assert tiles["n_sources"].sum().item() == 12
    assert torch.equal(tiles["n_sources"], sep_tile_counts(cat, 16))


def test_tile_counts_histogram():
    plocs = torch.tensor(
        [
            [[0.5, 0.5], [1.0, 1.9], [1.99, 0.0], [2.0, 2.0], [7.9, 5.0], [-0.1, 3.0], [0.0, 0.0]],
            [[4.0, 4.0], [9.0, 9.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    # image 0: 6 active (one off the image); image 1: 2 active (one off the image)
    cat = FullCatalog(8, 8, {"n_sources": torch.tensor([6, 2]), "plocs": plocs})
    counts = sep_tile_counts(cat, 2)
    assert counts.shape == (2, 4, 4) and counts.dtype == torch.int64
    want = torch.zeros(2, 4, 4, dtype=torch.int64)
    want[0, 0, 0] = 3  # three detections in one tile: no clipping
    want[0, 1, 1] = 1
    want[0, 3, 2] = 1
    want[1, 2, 2] = 1
    assert torch.equal(counts, want)
    with pytest.raises(ValueError):
        sep_tile_counts(cat, 3)


def test_overflow_raises_sep_limits(rendered):
    cfg, batch = rendered
    old = sep.get_sub_object_limit()
    sep.set_sub_object_limit(1)
    try:
        det = sep_detect(batch.images[0, 2], _sigma(cfg, batch), deblend_cont=0.0)
        assert len(det["flux"]) >= 6
        assert sep.get_sub_object_limit() >= 8192
    finally:
        sep.set_sub_object_limit(old)


def test_per_pixel_sigma_map(rendered):
    cfg, batch = rendered
    image = batch.images[0, 2]
    sigma = torch.sqrt((batch.background[0, 2] + image.clamp_min(0)) / cfg.nelec_per_nmgy[2])
    det = sep_detect(image, sigma, thresh=3.0)
    assert len(det["flux"]) == 6 and np.all(det["flux_err"] > 0)
