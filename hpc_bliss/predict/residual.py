"""The catalog checked against the image itself: the frame minus a rendering of the catalog
with the field's PSF, in units of the noise σ of each pixel.

The scene is rendered by the project's :class:`Renderer` (its noise-free image, with the
field's psField PSF in place of the config's) block by block: each block of ``block`` pixels is
rendered with a margin wide enough for the PSF (``radius`` + 1 px) holding the sources whose
light reaches it, and the margin is cut off. Stars cost one matrix product per block and band;
galaxies cost a whole Fourier grid each (a catalog of galaxies renders far slower).
The σ of a pixel is the field's noise model evaluated at the model (sky + rendered scene), so
a perfect catalog leaves pure noise: an RMS of 1.0 (SurveyField.variance).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import PSF_KEYS, RenderConfig
from hpc_bliss.simulate.render import Renderer


def field_render_config(render: RenderConfig, psf: np.ndarray) -> RenderConfig:
    """``render`` with the PSF (B, 6) of a field in place of the config's, no noise."""
    values: dict[str, Any] = {k: [float(v) for v in psf[:, i]] for i, k in enumerate(PSF_KEYS)}
    return replace(render, psf=replace(render.psf, **values), add_noise=False)


def render_catalog(
    render: RenderConfig,
    shape: tuple[int, int],
    catalog: FullCatalog,
    block: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Noise-free (B, H, W) nmgy image of ``catalog`` (one image, positions in frame pixels)."""
    margin = int(math.ceil(render.psf.radius)) + 1
    size = block + 2 * margin
    renderer = Renderer(render, size, size, device)
    h, w = shape
    out = np.zeros((renderer.n_bands, h, w), np.float32)
    n = int(catalog["n_sources"][0])
    plocs = catalog["plocs"][0, :n]
    keys = [k for k in catalog.keys() if k != "n_sources"]
    for r0 in range(0, h, block):
        for c0 in range(0, w, block):
            origin = torch.tensor([r0 - margin, c0 - margin], dtype=plocs.dtype)
            local = plocs - origin
            near = ((local >= 0) & (local < size)).all(-1)
            if not bool(near.any()):
                continue
            data = {k: catalog[k][0, :n][near][None] for k in keys}
            data["plocs"] = local[near][None]
            data["n_sources"] = torch.tensor([int(near.sum())])
            img = renderer.noiseless(FullCatalog(size, size, data)).cpu().numpy()[0]
            bh, bw = min(block, h - r0), min(block, w - c0)
            out[:, r0 : r0 + bh, c0 : c0 + bw] += img[:, margin : margin + bh, margin : margin + bw]
    return out


def residual_sigma(field, model: np.ndarray) -> np.ndarray:
    """(image - model) / σ(model), (B, H, W): σ from the field's noise model at sky + model."""
    var = field.variance(signal=model)
    return ((field.image - model) / np.sqrt(var)).astype(np.float32)


def residual_stats(res: np.ndarray, keep: np.ndarray) -> dict[str, list[float]]:
    """RMS and 99th percentile of |residual| per band, over the pixels where ``keep`` (B, H, W)
    is true (rounded to 4 digits)."""
    rms, p99 = [], []
    for b in range(res.shape[0]):
        values = res[b][keep[b]].astype(np.float64)
        rms.append(round(float(np.sqrt(np.mean(values**2))), 4) if values.size else float("nan"))
        p99.append(
            round(float(np.percentile(np.abs(values), 99)), 4) if values.size else float("nan")
        )
    return {"rms": rms, "p99": p99}
