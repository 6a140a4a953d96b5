"""One simulation step: sample catalogs from the prior and render them."""

from __future__ import annotations

import torch

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.config import Config
from hpc_bliss.simulate.prior import sample_prior
from hpc_bliss.simulate.render import RenderedBatch, Renderer


def make_renderer(cfg: Config, device: torch.device | str) -> Renderer:
    return Renderer(cfg.render, cfg.prior.image_height, cfg.prior.image_width, device)


def simulate_batch(
    cfg: Config,
    n_images: int,
    generator: torch.Generator,
    renderer: Renderer,
) -> tuple[TileCatalog, RenderedBatch]:
    """Sample ``n_images`` catalogs and render them on the renderer's device.

    ``generator`` must live on that device; it drives both the prior and the noise.
    """
    catalog = sample_prior(cfg.prior, n_images, generator, renderer.device)
    return catalog, renderer.render(catalog, generator)
