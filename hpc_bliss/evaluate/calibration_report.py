"""The report's posterior-calibration section (report.md) and reliability.png, from
``report["calibration"]`` (:meth:`hpc_bliss.evaluate.calibration.CalibrationCounts.metrics`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _coverage_row(name: str, n: int, interval: list, pit: list) -> str:
    cells = [f"{_f(a)} / {_f(b)}" for a, b in zip(interval, pit, strict=True)]
    return f"| {name} | {n} | " + " | ".join(cells) + " |"


def _coverage_lines(cal: dict[str, Any], bands: list[str] | None) -> list[str]:
    """The coverage table: observed coverage (interval / PIT) at each nominal level."""
    cov, flux, levels = cal["count_coverage"], cal["flux_coverage"], cal["levels"]
    region = cal["region_tiles"]
    lines = [
        "Coverage of central credible intervals from the samples, observed at each nominal "
        "level (the columns): `interval` is the "
        "fraction of truths inside [lower, upper], lower the largest v with P(X < v) ≤ α/2 and "
        "upper the smallest v with P(X > v) ≤ α/2 over the samples X (α = 1 − level; for counts "
        "the interval holds at least the level, so a calibrated q covers at least nominally); "
        "`PIT` is the mean probability that the randomised PIT, uniform on [P(X < truth), "
        "P(X ≤ truth)], falls in [α/2, 1 − α/2] (nominal on average for a calibrated q, counts "
        "included). Cells: interval / PIT.",
        "",
        "| quantity | n | " + " | ".join(f"{lv}%" for lv in levels) + " |",
        "|---|---|" + "---|" * len(levels),
        _coverage_row("sources per image (interior)", **cov["image"]),
        _coverage_row(f"sources per {region}×{region}-tile region", **cov["region"]),
    ]
    names = bands or [str(b) for b in range(len(flux["interval"][0]))]
    for b, name in enumerate(names):
        lines.append(
            _coverage_row(
                f"flux of a lone source, {name}",
                flux["tiles_qualified"],
                [row[b] for row in flux["interval"]],
                [row[b] for row in flux["pit"]],
            )
        )
    return lines


def markdown_lines(cal: dict[str, Any], bands: list[str] | None = None) -> list[str]:
    """The calibration section of report.md."""
    rel, flux, nll = cal["reliability"], cal["flux_coverage"], cal["nll"]
    per_class = ", ".join(
        f"{c}: {_f(t['ece'], 4)}" for c, t in zip(rel["classes"], rel["per_class"], strict=True)
    )
    lines = [
        "",
        f"## Posterior calibration ({cal['n_samples']} samples of q per image)",
        "",
        "Count reliability: for each interior tile and count class c, p̂(c) is the fraction of "
        'the samples with that count (the last class reads "at least"); the (tile, class) '
        "pairs are binned by p̂ into 10 bins. Expected calibration error (ECE, the pair-weighted "
        f"mean of |mean p̂ − observed frequency|): **{_f(rel['ece'], 4)}** (per class {per_class}; "
        f"top-label, the most probable class: {_f(rel['top_label']['ece'], 4)}).",
        "",
        "![reliability](reliability.png)",
        "",
    ]
    lines += _coverage_lines(cal, bands)
    lines += [
        "",
        f"Fluxes: {flux['tiles_single']} interior tiles hold exactly one true source; "
        f"{flux['tiles_qualified']} of them have at least {cal['min_flux_samples']} samples "
        "with exactly one source there, whose fluxes make the intervals.",
        "",
        f"Log-likelihood of the true catalog under q: mean −log q(z | x) "
        f"**{_f(nll['per_tile'], 4)} per interior tile** ({nll['tiles']} tiles), "
        f"{_f(nll['per_image'], 1)} per image ({nll['images']} images)"
        + (
            f"; {nll['nonfinite_tiles']} non-finite tiles left out"
            if nll["nonfinite_tiles"]
            else ""
        )
        + ".",
    ]
    return lines


def reliability_png(cal: dict[str, Any], path: Path) -> None:
    """Predicted probability against observed frequency per bin (pooled and per class), the
    diagonal, and the number of (tile, class) pairs per bin."""
    rel = cal["reliability"]
    edges = np.array(rel["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2

    def arr(values: list) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    fig = Figure(figsize=(9, 4))
    ax, hist = fig.subplots(1, 2)
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="calibrated")
    ax.plot(arr(rel["mean_predicted"]), arr(rel["observed"]), "o-", color="k", label="pooled")
    for name, table in zip(rel["classes"], rel["per_class"], strict=True):
        ax.plot(arr(table["mean_predicted"]), arr(table["observed"]), ".--", label=f"count {name}")
    top = rel["top_label"]
    ax.plot(arr(top["mean_predicted"]), arr(top["observed"]), "s-", mfc="none", label="top-label")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability p̂ (mean in bin)")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"count reliability: ECE {_f(rel['ece'], 4)}")
    ax.legend(fontsize=7)
    hist.bar(centres, np.maximum(np.array(rel["n"], dtype=float), 0.5), width=0.09, log=True)
    hist.set_xlabel("p̂ bin")
    hist.set_ylabel("(tile, class) pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
