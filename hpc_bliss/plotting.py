"""PNG figures of images with their catalogs (matplotlib's Figure, no pyplot: saving needs no
display and leaves the backend of a notebook or script that imports this alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor


def plot_bands(
    image: Tensor,
    plocs: Tensor,
    source_type: Tensor,
    bands: list[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Save a row of panels, one per band, of ``image`` (B, H, W) with the true sources marked.

    ``plocs`` (S, 2) are (row, col) pixel coordinates of the active sources and ``source_type``
    (S,) their types: stars are drawn as red crosses, galaxies as cyan circles.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image.detach().cpu().numpy()
    locs = plocs.detach().cpu().numpy()
    kinds = source_type.detach().cpu().numpy().astype(bool)
    fig = Figure(figsize=(3.2 * len(bands), 3.6))
    axes = fig.subplots(1, len(bands), squeeze=False)
    for b, ax in enumerate(axes[0]):
        band = img[b]
        lo, hi = np.percentile(band, [1, 99.5])
        ax.imshow(np.arcsinh((band - lo) / max(hi - lo, 1e-9) * 10), cmap="gray", origin="upper")
        # imshow puts pixel (i, j)'s centre at (j, i); plocs measure from the pixel corner
        ax.scatter(locs[~kinds, 1] - 0.5, locs[~kinds, 0] - 0.5, marker="+", c="red", s=18, lw=0.7)
        ax.scatter(
            locs[kinds, 1] - 0.5,
            locs[kinds, 0] - 0.5,
            marker="o",
            s=40,
            lw=0.8,
            facecolors="none",
            edgecolors="cyan",
        )
        ax.set_title(f"band {bands[b]}")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


RAMP = " .:-=+*#%@"  #: text shades, faint to bright


def text_picture(
    band: Tensor, plocs: Tensor, source_type: Tensor, max_width: int = 48
) -> list[str]:
    """One band of an image as lines of text, for a terminal or a README: the asinh-stretched
    brightness as the shades of :data:`RAMP` (each pixel two characters wide, so it looks
    square), true stars marked ``*`` → ``S`` and galaxies ``G`` at their pixels.

    Images wider than ``max_width`` pixels are shown at a whole-number reduction (block means).
    """
    img = band.detach().cpu().double().numpy()
    step = max(1, -(-img.shape[1] // max_width))
    h, w = img.shape[0] // step, img.shape[1] // step
    img = img[: h * step, : w * step].reshape(h, step, w, step).mean(axis=(1, 3))
    lo, hi = np.percentile(img, [1, 99.5])
    level = np.arcsinh(np.clip((img - lo) / max(hi - lo, 1e-12), 0, None) * 10) / np.arcsinh(10)
    index = np.clip((level * (len(RAMP) - 1)).round().astype(int), 0, len(RAMP) - 1)
    rows = [[RAMP[i] * 2 for i in row] for row in index]
    kinds = source_type.detach().cpu().numpy().astype(bool).reshape(-1)
    for (r, c), galaxy in zip(plocs.detach().cpu().numpy() / step, kinds, strict=True):
        if 0 <= int(r) < h and 0 <= int(c) < w:
            rows[int(r)][int(c)] = "G " if galaxy else "S "
    return ["".join(row).rstrip() for row in rows]
