"""PNG figures of a catalogued field: the reference band with the sources marked, and the
residual map in σ (matplotlib's Figure, no pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _figure(shape: tuple[int, int], width_in: float = 14.0) -> tuple[Figure, Axes]:
    h, w = shape
    fig = Figure(figsize=(width_in, width_in * h / w + 0.6))
    return fig, fig.subplots(1, 1)


def plot_overlay(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, path: Path, title: str
) -> Path:
    """The (H, W) image, asinh-stretched, with a red dot per source (pixel centres at i + 0.5
    in ``rows``/``cols``, as the catalog's)."""
    fig, ax = _figure(image.shape)
    lo, hi = np.percentile(image, [1, 99.5])
    ax.imshow(np.arcsinh((image - lo) / max(hi - lo, 1e-9) * 10), cmap="gray", origin="upper")
    ax.scatter(cols - 0.5, rows - 0.5, s=0.6, c="red", lw=0, alpha=0.8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return path


def plot_residual(res: np.ndarray, path: Path, title: str, clip: float = 5.0) -> Path:
    """The (H, W) residual in σ, clipped to ±``clip``, with a colour bar."""
    fig, ax = _figure(res.shape)
    shown = ax.imshow(np.clip(res, -clip, clip), cmap="RdBu_r", vmin=-clip, vmax=clip)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="(image − model) / σ")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return path
