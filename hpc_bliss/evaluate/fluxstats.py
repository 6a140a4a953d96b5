"""Flux bias and scatter of matched pairs from fixed-bin histograms of ln(pred / true).

Quantiles of pred/true - 1 (median, 16th and 84th percentiles) cannot be merged from
per-process quantiles, but histograms can: every pair adds 1 to the bin of ln(pred / true) on a
fixed grid (``LOG_LO`` to ``LOG_HI`` in steps of ``LOG_WIDTH``, plus an underflow bin, which also
takes predictions <= 0, and an overflow bin). The integer counts of several processes add
exactly, and quantiles are read from the merged histogram, interpolating linearly inside a bin:
they are exact to within one bin (1% in the ratio), and 2 processes give exactly what 1 gives.
A quantile in the underflow (overflow) bin is reported at the grid's edge, e^-6 - 1 (e^6 - 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOG_LO, LOG_HI, LOG_WIDTH = -6.0, 6.0, 0.01  #: grid of ln(pred / true)
N_LOG_BINS = round((LOG_HI - LOG_LO) / LOG_WIDTH)  #: regular bins; + underflow and overflow
QUANTILES = {"median": 0.5, "p16": 0.16, "p84": 0.84}  #: reported, as pred/true - 1


def ratio_bins(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Histogram index (0 underflow, 1 .. N_LOG_BINS, N_LOG_BINS + 1 overflow) of each
    ln(pred / true); ``true`` must be > 0 and both finite; ``pred <= 0`` is underflow."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(np.where(pred > 0, pred, np.nan) / true)
    idx = np.floor((log_ratio - LOG_LO) / LOG_WIDTH) + 1
    idx = np.where(np.isnan(idx), 0, np.clip(idx, 0, N_LOG_BINS + 1))
    return idx.astype(np.int64)


def log_cdf(counts: np.ndarray, y: float) -> float:
    """Fraction of the histogram ``counts`` (N_LOG_BINS + 2,) at or below ln ratio ``y``,
    linear inside a bin; the underflow (overflow) mass sits at LOG_LO (LOG_HI)."""
    n = counts.sum()
    if y < LOG_LO:
        return 0.0
    if y >= LOG_HI:
        return 1.0
    x = (y - LOG_LO) / LOG_WIDTH
    j = min(int(x), N_LOG_BINS - 1)
    below = counts[: j + 1].sum() + counts[j + 1] * (x - j)
    return float(below / n)


def log_quantile(counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of ln ratio from the histogram (None if empty)."""
    n = int(counts.sum())
    if n == 0:
        return None
    target = q * n
    cum = np.cumsum(counts)
    j = int(np.searchsorted(cum, target, side="left"))
    if j == 0:
        return LOG_LO
    if j >= N_LOG_BINS + 1:
        return LOG_HI
    frac = (target - cum[j - 1]) / counts[j]
    return LOG_LO + (j - 1 + frac) * LOG_WIDTH


def median_abs_error(counts: np.ndarray) -> float | None:
    """Median of |pred/true - 1| from the ln-ratio histogram: the smallest x with
    P(ln(1 - x) <= ln ratio <= ln(1 + x)) >= 1/2, found by bisection (None if empty)."""
    if counts.sum() == 0:
        return None

    def inside(x: float) -> float:
        lower = log_cdf(counts, math.log(1 - x)) if x < 1 else 0.0
        return log_cdf(counts, math.log1p(x)) - lower

    lo, hi = 0.0, math.expm1(LOG_HI)
    if inside(hi) < 0.5:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if inside(mid) >= 0.5 else (mid, hi)
    return hi


def summary(counts: np.ndarray) -> dict[str, Any]:
    """n and the quantiles of pred/true - 1 of one histogram."""
    out: dict[str, Any] = {"n": int(counts.sum())}
    for key, q in QUANTILES.items():
        v = log_quantile(counts, q)
        out[key] = None if v is None else math.expm1(v)
    return out


def ratio_table(hist: np.ndarray, labels: list[str], bright: list[bool]) -> dict[str, Any]:
    """The report's flux bias and scatter from ``hist`` (mag bins, bands, N_LOG_BINS + 2):
    per true r-magnitude bin (``labels``) and band, and per band over all bins, n and the
    median, 16th and 84th percentiles of pred/true - 1; and per band the median |pred/true - 1|
    over the bins flagged ``bright``."""
    n_mag, n_bands = hist.shape[:2]
    cells = [[summary(hist[m, b]) for b in range(n_bands)] for m in range(n_mag)]
    table: dict[str, Any] = {"labels": labels}
    for key in ("n", *QUANTILES):
        table[key] = [[c[key] for c in row] for row in cells]
    everything = hist.sum(0)
    table["all"] = [summary(everything[b]) for b in range(n_bands)]
    bright_hist = hist[np.asarray(bright, bool)].sum(0)
    table["bright_median_abs_error"] = [median_abs_error(bright_hist[b]) for b in range(n_bands)]
    table["bright_n"] = [int(bright_hist[b].sum()) for b in range(n_bands)]
    return table
