"""The lensing section of the evaluation report: a table of every method's errors and shear
biases, the encoder's interval coverage, and lensing_map.png (true and predicted fields of one
held-out image's interior cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from hpc_bliss.evaluate.lensing import METHODS
from hpc_bliss.model.lensing import COMPONENTS

LABELS = {
    "encoder": "encoder (posterior mean)",
    "zero": "zero",
    "oracle": "oracle: true galaxies' ε, cell mean",
    "moments": "moments: SEP detections' ε, cell mean",
    "oracle_image": "oracle, image mean",
    "moments_image": "moments, image mean",
}
SYMBOLS = {"gamma1": "γ1", "gamma2": "γ2", "kappa": "κ"}


def _num(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def _bias(fit: dict[str, Any], key: str, spec: str) -> str:
    if fit.get(key) is None:
        return "n/a"
    return f"{fit[key]:{spec}} ± {_num(fit[key + '_se'], '.1e' if key == 'c' else '.3f')}"


def markdown_lines(lens: dict[str, Any]) -> list[str]:
    """The report.md section of ``lens`` (lensing.LensingCounts.metrics)."""
    zero, tiles_per_cell = lens["zero"]["shear_mse"], lens["tiles_per_cell"]
    lines = [
        "",
        f"## Weak lensing: cells of {tiles_per_cell}×{tiles_per_cell} tiles",
        "",
        f"{lens['n_cells']} held-out interior cells. Truth: each cell's mean of the tile fields; "
        "x = column, y = row, γ1 > 0 along x, γ2 > 0 along x = y. Fit: predicted = (1 + m) · "
        "true + c per component, standard errors robust to the cells of one image being "
        "correlated. Rescaled: the shear MSE of the best linear function of the method's "
        "predictions (fitted here), what the method knows whatever its scale.",
        "",
        "| method | MSE γ1 | MSE γ2 | MSE κ | shear MSE / zero's | rescaled / zero's "
        "| m1 | c1 | m2 | c2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        r = lens[method]
        mse = [_num(r[c]["mse"]) if c in r else "n/a" for c in COMPONENTS]
        ratios = [
            r[key] / zero if zero and r[key] is not None else None
            for key in ("shear_mse", "shear_mse_rescaled")
        ]
        g1, g2 = r["gamma1"], r["gamma2"]
        biases = [_bias(g1, "m", "+.3f"), _bias(g1, "c", "+.1e")]
        biases += [_bias(g2, "m", "+.3f"), _bias(g2, "c", "+.1e")]
        cells = [LABELS[method], *mse, *(_num(x, ".3f") for x in ratios), *biases]
        lines.append("| " + " | ".join(cells) + " |")
    cov = lens["coverage"]
    lines += [
        "",
        "Coverage of the encoder's central intervals (nominal 68% / 95%): "
        + ", ".join(
            f"{SYMBOLS[c]} {_num(cov['68'][c], '.3f')} / {_num(cov['95'][c], '.3f')}"
            for c in COMPONENTS
        )
        + ".",
        "",
        "Cells (or, for the image means, cells of images) with no galaxy or measurement, "
        "predicted 0: " + ", ".join(f"{k} {v}" for k, v in lens["empty_cells"].items()) + ".",
        "",
        "![lensing map](lensing_map.png)",
    ]
    return lines


def lensing_png(maps: dict[str, Tensor], path: Path) -> None:
    """True field, posterior mean and posterior standard deviation of γ1, γ2, κ per cell."""
    truth, mean, scale = (maps[k].numpy() for k in ("truth", "mean", "scale"))
    fig = Figure(figsize=(10, 9))
    axes = fig.subplots(3, 3)
    for j, comp in enumerate(COMPONENTS):
        lim = float(np.abs(np.concatenate([truth[..., j], mean[..., j]])).max()) or 1.0
        rows = [(truth, "true", "RdBu_r", -lim, lim), (mean, "predicted", "RdBu_r", -lim, lim)]
        rows.append((scale, "predicted σ", "viridis", 0.0, float(scale[..., j].max())))
        for i, (values, name, cmap, lo, hi) in enumerate(rows):
            ax = axes[i, j]
            shown = ax.imshow(values[..., j], cmap=cmap, vmin=lo, vmax=hi)
            fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(f"{name} {SYMBOLS[comp]}")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("one held-out image's interior cells (x = column, y = row)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
