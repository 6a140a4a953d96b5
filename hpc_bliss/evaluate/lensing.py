"""Scoring the lensing head on held-out interior cells against three baselines, as exact sums.

Per cell the truth is the mean of the tile fields (γ1, γ2, κ) over the cell
(:func:`~hpc_bliss.model.lensing.lensing_target`); cells holding a border tile are left out.
Methods (``METHODS``): the encoder's posterior mean; predicting zero; the mean lensed
ellipticity of the true galaxies in the cell (the oracle, :mod:`hpc_bliss.evaluate.shapes`);
the mean PSF-corrected moment ellipticity of the SEP detections in the cell (moments); and the
last two averaged over the whole image instead of the cell (``*_image``: the field has a
constant per image, which a cell's few galaxies cannot pin down). A cell (or image) without a
galaxy or measurement gets 0. The ellipticity methods give no κ.

Numbers: the mean squared error per component; the linear fit p = (1 + m) t + c of predicted
on true values per component (ordinary least squares), with cluster-robust standard errors
that treat each image as a cluster (its cells share the per-image constant, so they are not
independent); and the encoder's coverage: the fraction of cells whose truth lies in the central
68% and 95% intervals of its normal.

Every value is rounded once to a multiple of 2⁻³² and the counts are Python integers, so the
sums of several processes add exactly: 2 processes give exactly the result of 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpc_bliss.catalog import REF_BAND, FullCatalog, TileCatalog
from hpc_bliss.evaluate.shapes import cell_sums, moment_ellipticities, oracle_cell_sums
from hpc_bliss.model.lensing import COMPONENTS, LensingDist, lensing_target

METHODS = ("encoder", "zero", "oracle", "moments", "oracle_image", "moments_image")
SHAPE_METHODS = METHODS[2:]  #: the ellipticity baselines: γ1 and γ2 only
LEVELS = {"68": 0.9944578832097535, "95": 1.959963984540054}  #: central interval: z of Φ⁻¹
Q = 2**32  #: fixed-point scale: values are stored as round(x · Q)
_SCALES0, _SCALES1 = (1, 0, 1), (2, 1, 2)  #: powers of Q in (P, n, T) and (TP, T, TT)
_SUMS = ("n", "st", "sp", "stt", "stp", "spp")


def components(method: str) -> tuple[str, ...]:
    return COMPONENTS[:2] if method in SHAPE_METHODS else COMPONENTS


def _empty() -> dict[str, Any]:
    return {**dict.fromkeys(_SUMS, 0), "images": 0, "g00": [0] * 9, "g01": [0] * 9, "g11": [0] * 9}


def _quantize(x: np.ndarray) -> list[list[int]]:
    """(N, cells) floats -> per image, the cells' values as integers round(x · Q)."""
    return [[int(v) for v in row] for row in np.rint(np.asarray(x, np.float64) * Q)]


def _add_image(s: dict[str, Any], t: list[int], p: list[int]) -> None:
    """Add one image's cells (fixed-point truths ``t``, predictions ``p``) to the sums ``s``."""
    n, st, sp = len(t), sum(t), sum(p)
    stt = sum(a * a for a in t)
    stp = sum(a * b for a, b in zip(t, p, strict=True))
    for key, total in zip(_SUMS, (n, st, sp, stt, stp, sum(b * b for b in p)), strict=True):
        s[key] += total
    s["images"] += 1
    a0, a1 = (sp, n, st), (stp, st, stt)
    for key, u, v in (("g00", a0, a0), ("g01", a0, a1), ("g11", a1, a1)):
        s[key] = [g + u[j] * v[k] for (j, k), g in zip(np.ndindex(3, 3), s[key], strict=True)]


class LensingCounts:
    """The sums of every method and component, and the encoder's interval counts."""

    def __init__(self, tiles_per_cell: int) -> None:
        self.tiles_per_cell = tiles_per_cell
        self.sums = {m: {c: _empty() for c in components(m)} for m in METHODS}
        self.inside = {level: dict.fromkeys(COMPONENTS, 0) for level in LEVELS}
        self.empty_cells = dict.fromkeys(SHAPE_METHODS, 0)  #: cells (images) predicted 0

    def update(self, truth: Tensor, preds: dict[str, Tensor], mean: Tensor, scale: Tensor) -> None:
        """Add a batch of interior cells: ``truth``, the encoder's ``mean`` and ``scale`` (N, Hc,
        Wc, 3), and each baseline's prediction (N, Hc, Wc, k) (NaN where it has no value)."""
        n = truth.shape[0]
        t = truth.double().reshape(n, -1, 3).cpu().numpy()
        for method in METHODS:
            p = (mean if method == "encoder" else preds[method]).double().cpu().numpy()
            p = p.reshape(n, -1, p.shape[-1])
            if method in SHAPE_METHODS:
                self.empty_cells[method] += int(np.isnan(p[..., 0]).sum())
                p = np.nan_to_num(p, nan=0.0)
            for k, comp in enumerate(components(method)):
                tq, pq = _quantize(t[..., k]), _quantize(p[..., k])
                for ti, pi in zip(tq, pq, strict=True):
                    _add_image(self.sums[method][comp], ti, pi)
        err = (truth - mean).abs() / scale
        for level, z in LEVELS.items():
            counts = (err <= z).reshape(-1, 3).sum(0).tolist()
            for comp, c in zip(COMPONENTS, counts, strict=True):
                self.inside[level][comp] += int(c)

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, dicts and lists (JSON- and MPI-friendly)."""
        counts = {"sums": self.sums, "inside": self.inside, "empty_cells": self.empty_cells}
        return {"tiles_per_cell": self.tiles_per_cell, **counts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LensingCounts:
        out = cls(d["tiles_per_cell"])
        out.sums, out.inside, out.empty_cells = d["sums"], d["inside"], d["empty_cells"]
        return out

    def __add__(self, other: LensingCounts) -> LensingCounts:
        if other.tiles_per_cell != self.tiles_per_cell:
            raise ValueError("cannot add LensingCounts of different tiles_per_cell")
        a, b = self.to_dict(), other.to_dict()
        return LensingCounts.from_dict({**_added(a, b), "tiles_per_cell": self.tiles_per_cell})

    def metrics(self) -> dict[str, Any]:
        """MSE, m and c with standard errors per method and component, and the coverage."""
        out: dict[str, Any] = {m: {c: fit(self.sums[m][c]) for c in components(m)} for m in METHODS}
        for method in METHODS:
            for key in ("mse", "mse_rescaled"):
                mse = [out[method][c][key] for c in COMPONENTS[:2]]
                out[method][f"shear_{key}"] = None if None in mse else (mse[0] + mse[1]) / 2
        n = self.sums["encoder"][COMPONENTS[0]]["n"]
        out["coverage"] = {
            level: {c: (k / n if n else None) for c, k in self.inside[level].items()}
            for level in LEVELS
        }
        out["n_cells"], out["tiles_per_cell"] = n, self.tiles_per_cell
        out["empty_cells"] = dict(self.empty_cells)
        return out


def _added(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _added(a[k], b[k]) for k in a}
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b, strict=True)]
    return a + b


def _matrix(flat: list[int], rows: tuple[int, ...], cols: tuple[int, ...]) -> np.ndarray:
    """A 3×3 sum of products of fixed-point values, in plain units."""
    values = [
        v / Q ** (rows[j] + cols[k]) for (j, k), v in zip(np.ndindex(3, 3), flat, strict=True)
    ]
    return np.array(values, dtype=np.float64).reshape(3, 3)


def fit(s: dict[str, Any]) -> dict[str, float | int | None]:
    """MSE and the fit p = (1 + m) t + c of one method and component from its sums, with
    cluster-robust (per image, CR1) standard errors of m and c; and ``mse_rescaled``, the MSE
    of the best linear function of the predictions, var(t) (1 − corr(t, p)²): what the method
    knows, whatever its scale (an information measure, fitted on the scored cells)."""
    n = s["n"]
    keys = ("mse", "mse_rescaled", "m", "m_se", "c", "c_se")
    out: dict[str, float | int | None] = dict.fromkeys(keys)
    out["n"] = n
    if n == 0:
        return out
    out["mse"] = (s["spp"] - 2 * s["stp"] + s["stt"]) / (n * Q * Q)
    sxx = n * s["stt"] - s["st"] ** 2  # exact integers: n² Q² var(t)
    if sxx <= 0:
        return out
    sxy, syy = n * s["stp"] - s["st"] * s["sp"], n * s["spp"] - s["sp"] ** 2
    slope = sxy / sxx
    r2 = sxy * sxy / (sxx * syy) if syy > 0 else 0.0
    out["mse_rescaled"] = sxx / (n * n * Q * Q) * (1.0 - r2)
    intercept = (s["sp"] - slope * s["st"]) / (n * Q)
    out["m"], out["c"] = slope - 1.0, intercept
    w = np.array([1.0, -intercept, -slope])
    g00 = _matrix(s["g00"], _SCALES0, _SCALES0)
    g01 = _matrix(s["g01"], _SCALES0, _SCALES1)
    g11 = _matrix(s["g11"], _SCALES1, _SCALES1)
    meat = np.array([[w @ g00 @ w, w @ g01 @ w], [w @ g01 @ w, w @ g11 @ w]])
    bread = np.array([[n, s["st"] / Q], [s["st"] / Q, s["stt"] / Q**2]], dtype=np.float64)
    inv = np.linalg.inv(bread)
    clusters = s["images"]
    factor = clusters / (clusters - 1) if clusters > 1 else math.nan
    cov = factor * inv @ meat @ inv
    out["c_se"], out["m_se"] = (float(math.sqrt(max(v, 0.0))) for v in np.diag(cov))
    return out


@dataclass
class LensingScorer:
    """How to score the lensing head: its cells, the cells dropped on each side, and the PSF
    covariance (2, 2) px² of ``band`` that the moments baseline subtracts."""

    tiles_per_cell: int
    border_cells: int
    psf_cov: np.ndarray
    band: int = REF_BAND

    def crop(self, x: Tensor) -> Tensor:
        b = self.border_cells
        return x[:, b : x.shape[1] - b, b : x.shape[2] - b]


def _means(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-cell and per-image means (N, Hc, Wc, 2) of sums (N, Hc, Wc, 2); NaN without any."""
    cell = sums / counts[..., None]  # 0 / 0 = NaN
    image = sums.sum((1, 2)) / counts.sum((1, 2))[:, None]
    return cell.float(), image[:, None, None, :].expand_as(sums).float()


def moment_cell_sums(
    s: LensingScorer, images: Tensor, sep: FullCatalog, shape: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """Sums (N, Hc, Wc, 2) of the usable moment ellipticities of SEP detections per cell (of
    ``shape`` (N, Hc, Wc)) and their counts (N, Hc, Wc)."""
    n, hc, wc = shape
    cell_px = images.shape[-1] // wc
    sums, counts = [], []
    for i in range(n):
        k = int(sep["n_sources"][i])
        plocs = sep["plocs"][i, :k].double().numpy()
        image = images[i, s.band].double().numpy()
        eps, ok = moment_ellipticities(image, plocs, s.psf_cov)
        cells = np.floor(plocs[ok] / cell_px).astype(np.int64)
        flat = np.clip(cells[:, 0], 0, hc - 1) * wc + np.clip(cells[:, 1], 0, wc - 1)
        total, count = cell_sums(torch.from_numpy(flat), torch.from_numpy(eps[ok]), hc * wc)
        sums.append(total.view(hc, wc, 2))
        counts.append(count.view(hc, wc))
    return torch.stack(sums), torch.stack(counts)


def baseline_predictions(
    s: LensingScorer, images: Tensor, truth: TileCatalog, sep: FullCatalog
) -> dict[str, Tensor]:
    """Every baseline's prediction (N, Hc, Wc, k) on the full cell grid: zero (k = 3), and the
    ellipticity means (k = 2, NaN where a cell or image has no galaxy or measurement)."""
    sums, counts = oracle_cell_sums(truth, s.tiles_per_cell)
    out = {"zero": torch.zeros((*counts.shape, len(COMPONENTS)))}
    out["oracle"], out["oracle_image"] = _means(sums, counts)
    n, hc, wc = counts.shape
    sums, counts = moment_cell_sums(s, images, sep, (n, hc, wc))
    out["moments"], out["moments_image"] = _means(sums, counts)
    return out


def score_lensing(
    counts: LensingCounts,
    s: LensingScorer,
    images: Tensor,
    truth: TileCatalog,
    sep: FullCatalog,
    q: LensingDist,
) -> dict[str, Tensor]:
    """Add a batch to ``counts``: the encoder's ``q`` and the baselines on the interior cells
    against the truth (cell means of ``truth``'s fields); returns image 0's interior maps
    (truth, mean, scale: (Hc', Wc', 3)) for the report's figure."""
    target = s.crop(lensing_target(truth, s.tiles_per_cell))
    preds = {k: s.crop(v) for k, v in baseline_predictions(s, images, truth, sep).items()}
    mean, scale = s.crop(q.mean.cpu()), s.crop(q.scale.cpu())
    counts.update(target, preds, mean, scale)
    return {"truth": target[0], "mean": mean[0], "scale": scale[0]}
