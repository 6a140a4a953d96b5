"""One simulation step: sample catalogs from the prior and render them."""

from __future__ import annotations

import time

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
    times: dict[str, float] | None = None,
) -> tuple[TileCatalog, RenderedBatch]:
    """Sample ``n_images`` catalogs and render them on the renderer's device: the one place
    where simulation happens (the preview, generation and the scripts all call it).

    ``generator`` must live on that device; it drives both the prior and the noise. With
    ``times``, the seconds spent sampling and rendering are added to its ``sample_s`` and
    ``render_s`` (on a GPU, after synchronising, so they are the work's own).
    """
    sync = torch.cuda.synchronize if renderer.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    catalog = sample_prior(cfg.prior, n_images, generator, renderer.device)
    sync()
    t1 = time.perf_counter()
    batch = renderer.render(catalog, generator)
    sync()
    if times is not None:
        times["sample_s"] = times.get("sample_s", 0.0) + t1 - t0
        times["render_s"] = times.get("render_s", 0.0) + time.perf_counter() - t1
    return catalog, batch
