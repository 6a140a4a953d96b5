"""Count-based evaluation accumulators whose merge is plain summation.

Accumulators keep integer counts (and float sums of flux errors). Those of several processes or
batches merge with ``+`` (or ``sum(...)``) into the counts of the whole data set; ``to_dict()``
gives plain ints, floats and lists (JSON/MPI-friendly), ``from_dict()`` restores them, and
``metrics()`` turns the counts into rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from copy import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpc_bliss.catalog import REF_BAND, FullCatalog, TileCatalog, nmgy_to_mag
from hpc_bliss.catalog.base import FLUX_KEYS
from hpc_bliss.evaluate.fluxstats import N_LOG_BINS, ratio_bins, ratio_table
from hpc_bliss.evaluate.matching import Matches

BRIGHT_MAG = 20.0  #: the flux table's median |pred/true - 1| is over true r < this (a bin edge)


def _rate(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _sum(a: Any, b: Any) -> Any:
    """Sum of two to_dict() values: numbers, or (nested) lists; 1-D lists are zero-padded."""
    if not isinstance(a, list):
        return a + b
    x, y = np.asarray(a), np.asarray(b)
    if x.ndim == 1 and len(x) != len(y):
        x, y = (np.pad(v, (0, max(len(x), len(y)) - len(v))) for v in (x, y))
    return (x + y).tolist()


class _Summable:
    """``a + b`` (and ``sum([...])``) adds every field of to_dict() but the settings ``_CONFIG``."""

    _CONFIG: tuple[str, ...] = ()  # constructor arguments, equal in both terms of a sum
    _FIELDS: tuple[str, ...] = ()  # counts: ints or numpy arrays

    def to_dict(self) -> dict[str, Any]:
        """Settings and counts as plain ints, floats and (nested) lists."""
        d = {k: getattr(self, k) for k in (*self._CONFIG, *self._FIELDS)}
        return {k: v.tolist() if isinstance(v, np.ndarray) else copy(v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`."""
        out = cls(**{k: d[k] for k in cls._CONFIG})
        for k in cls._FIELDS:
            old = getattr(out, k)  # an int or a numpy array
            new = np.asarray(d[k], old.dtype) if isinstance(old, np.ndarray) else int(d[k])
            setattr(out, k, new)
        return out

    def __add__(self, other: Any) -> Any:
        if type(other) is not type(self):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        if any(a[k] != b[k] for k in self._CONFIG):
            raise ValueError(f"cannot add {type(self).__name__}s with different {self._CONFIG}")
        return self.from_dict({k: a[k] if k in self._CONFIG else _sum(a[k], b[k]) for k in a})

    def __radd__(self, other: Any) -> Any:  # lets sum() start from 0
        return self if isinstance(other, int) and other == 0 else NotImplemented


class TileCounts(_Summable):
    """Per-tile source-count accuracy and confusion matrix (true count x predicted count).

    ``correct``/``within1`` use the unclipped true counts (a 3-source tile is never right for an
    encoder predicting at most 2); only the confusion matrix clips both counts to ``max_count``
    (its last row/column reads ">= max_count"). ``true_hist[k]`` counts tiles with k true sources.
    """

    _CONFIG = ("max_count",)
    _FIELDS = ("confusion", "true_hist", "correct", "within1", "total")

    def __init__(self, max_count: int) -> None:
        if max_count < 0:
            raise ValueError(f"max_count must be >= 0, got {max_count}")
        self.max_count = int(max_count)
        self.confusion = np.zeros((max_count + 1, max_count + 1), dtype=np.int64)
        self.true_hist = np.zeros(max_count + 1, dtype=np.int64)
        self.correct = self.within1 = self.total = 0

    def update(self, pred_n: Tensor, true_n: Tensor) -> None:
        """Add tiles ``pred_n``, ``true_n`` (N, Ht, Wt), both already cropped to interior tiles."""
        if tuple(pred_n.shape) != tuple(true_n.shape):
            raise ValueError(f"pred tiles {tuple(pred_n.shape)} != true {tuple(true_n.shape)}")
        p, t = (x.detach().cpu().long().reshape(-1).numpy() for x in (pred_n, true_n))
        diff = np.abs(p - t)
        self.correct += int((diff == 0).sum())
        self.within1 += int((diff <= 1).sum())
        self.total += int(diff.size)
        np.add.at(self.confusion, (t.clip(0, self.max_count), p.clip(0, self.max_count)), 1)
        hist = np.bincount(t, minlength=len(self.true_hist))
        self.true_hist = np.pad(self.true_hist, (0, len(hist) - len(self.true_hist))) + hist

    def update_catalogs(self, pred: TileCatalog, truth: TileCatalog, border_tiles: int) -> None:
        """Add the interior tiles of a batch: ``truth`` (N, Ht, Wt) is cropped by
        ``border_tiles`` per side; ``pred`` may be cropped already (as :meth:`Encoder.sample`
        returns it) or full size. Training validation and evaluation both count this way."""
        truth_n, pred_n = truth["n_sources"], pred["n_sources"]
        if border_tiles:
            if pred_n.shape == truth_n.shape:
                pred_n = pred.symmetric_crop(border_tiles)["n_sources"]
            truth_n = truth.symmetric_crop(border_tiles)["n_sources"]
        self.update(pred_n, truth_n)

    def most_frequent(self) -> tuple[int, float | None]:
        """Most frequent true count (ties: the smallest) and the accuracy of predicting it."""
        mode = int(self.true_hist.argmax())
        return mode, _rate(int(self.true_hist[mode]), self.total)

    def metrics(self) -> dict[str, Any]:
        mode, mode_rate = self.most_frequent()
        return {
            "n_sources_accuracy": _rate(self.correct, self.total),
            "n_sources_within_1": _rate(self.within1, self.total),
            "n_tiles": self.total,
            "most_frequent_count": mode,
            "most_frequent_rate": mode_rate,
            "confusion": self.confusion.tolist(),
        }


def most_frequent_rate(true_n: Tensor) -> tuple[int, float | None]:
    """Most frequent true count (ties: the smallest) and the accuracy of always predicting it."""
    counts = TileCounts(0)
    counts.update(true_n, true_n)
    return counts.most_frequent()


def _fluxes(cat: FullCatalog, n_bands: int, ref_band: int) -> np.ndarray | None:
    """Fluxes (N, M, n_bands) float64 with NaN in bands not measured: bands that are zero for
    every active source (e.g. SEP's), and all but ``ref_band`` in a single-band catalog."""
    if not any(k in cat for k in FLUX_KEYS):
        return None
    f = cat.fluxes.detach().cpu().numpy().astype(np.float64)  # a copy: edited below
    if f.shape[-1] == 1:
        f = np.where(np.arange(n_bands) == ref_band, f, np.nan)
    if f.shape[-1] != n_bands:
        raise ValueError(f"catalog has {f.shape[-1]} flux bands, expected {n_bands} or 1")
    f[..., (f[cat.is_on_mask.cpu().numpy()] == 0).all(0)] = np.nan
    return f


class DetectionCounts(_Summable):
    """Detection, classification and flux counts from matched true/predicted sources.

    * precision = matched / predicted, recall = matched / true, F1 their harmonic mean;
    * recall binned by the true magnitude in ``ref_band`` and precision binned by the predicted
      one: ``len(mag_bins) + 1`` bins, ``(-inf, e0), [e0, e1), ..., [e_last, inf)`` (zero or
      non-positive fluxes have magnitude +inf, the last bin);
    * classification accuracy over matched pairs when both catalogs have ``source_type``;
    * flux MAPE per band, mean of ``|pred - true| / true`` over matched pairs with true flux > 0
      (a mean: dominated by the few faint pairs whose prediction is a neighbour's flux);
    * flux bias and scatter (:mod:`~hpc_bliss.evaluate.fluxstats`): the median and 16th-84th
      percentiles of pred/true - 1 per true r-magnitude bin and band, from integer histograms
      ``flux_log_hist`` (bins, bands, ln-ratio bins) of ln(pred / true) over the same pairs; and
      per band the median |pred/true - 1| over true r < ``BRIGHT_MAG`` (bins whose upper edge
      is at most it);
    * F1 per magnitude bin from that bin's precision (predicted magnitude) and recall (true).

    A catalog without a key skips what needs it (those metrics are None); one flux band is read
    as ``ref_band``; bands zero for all sources are not measured. Flux error sums are floats
    (merged sums match one pass up to rounding); every other field is an exact integer count.
    """

    _CONFIG = ("mag_bins", "n_bands", "ref_band")
    _FIELDS = (
        *("n_true", "n_pred", "n_matched", "n_classified", "n_class_correct", "flux_count"),
        *("flux_err_sum", "true_bins", "true_matched_bins", "pred_bins", "pred_matched_bins"),
        "flux_log_hist",
    )

    def __init__(self, mag_bins: Sequence[float], n_bands: int, ref_band: int = REF_BAND) -> None:
        edges = [float(e) for e in mag_bins]
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"mag_bins must increase strictly, got {edges}")
        if not 0 <= ref_band < n_bands:
            raise ValueError(f"ref_band {ref_band} is not one of {n_bands} bands")
        self.mag_bins, self.n_bands, self.ref_band = edges, int(n_bands), int(ref_band)
        self.n_true = self.n_pred = self.n_matched = self.n_classified = self.n_class_correct = 0
        self.flux_count, self.flux_err_sum = np.zeros(n_bands, np.int64), np.zeros(n_bands)
        self.true_bins, self.true_matched_bins, self.pred_bins, self.pred_matched_bins = (
            np.zeros(len(edges) + 1, np.int64) for _ in range(4)
        )
        self.flux_log_hist = np.zeros((len(edges) + 1, n_bands, N_LOG_BINS + 2), np.int64)

    def _bin(self, mags: np.ndarray) -> np.ndarray:
        return np.digitize(mags, self.mag_bins)

    def _hist(self, bins: np.ndarray) -> np.ndarray:
        return np.bincount(bins, minlength=len(self.mag_bins) + 1)

    def update(self, truth: FullCatalog, pred: FullCatalog, matches: Sequence[Matches]) -> None:
        """Add one batch; ``matches`` is :func:`~hpc_bliss.evaluate.matching.match_catalogs`."""
        n_img = truth.batch_size
        if pred.batch_size != n_img or len(matches) != n_img:
            raise ValueError(f"{n_img} true images, {pred.batch_size} predicted, {len(matches)}")
        t_n, p_n = truth["n_sources"].cpu().tolist(), pred["n_sources"].cpu().tolist()
        t_flux = _fluxes(truth, self.n_bands, self.ref_band)
        p_flux = _fluxes(pred, self.n_bands, self.ref_band)
        t_type = truth["source_type"][..., 0].cpu().numpy() if "source_type" in truth else None
        p_type = pred["source_type"][..., 0].cpu().numpy() if "source_type" in pred else None
        r = self.ref_band
        for i, (ti, pi) in enumerate(matches):
            ti, pi = np.asarray(ti, dtype=np.int64), np.asarray(pi, dtype=np.int64)
            if len(ti) != len(pi) or (ti >= t_n[i]).any() or (pi >= p_n[i]).any():
                raise ValueError(f"image {i}: matches are not pairs of active sources")
            self.n_true += t_n[i]
            self.n_pred += p_n[i]
            self.n_matched += len(ti)
            if t_flux is not None:
                bins = self._bin(nmgy_to_mag(torch.from_numpy(t_flux[i, : t_n[i], r])).numpy())
                self.true_bins += self._hist(bins)
                self.true_matched_bins += self._hist(bins[ti])
            if p_flux is not None:
                bins = self._bin(nmgy_to_mag(torch.from_numpy(p_flux[i, : p_n[i], r])).numpy())
                self.pred_bins += self._hist(bins)
                self.pred_matched_bins += self._hist(bins[pi])
            if t_type is not None and p_type is not None:
                self.n_classified += len(ti)
                self.n_class_correct += int((t_type[i, ti] == p_type[i, pi]).sum())
            if t_flux is not None and p_flux is not None:
                tf, pf = t_flux[i, ti], p_flux[i, pi]
                ok = (tf > 0) & np.isfinite(tf) & np.isfinite(pf)
                err = np.abs(pf - tf) / np.where(ok, tf, 1.0)
                self.flux_err_sum += np.where(ok, err, 0.0).sum(0)
                self.flux_count += ok.sum(0)
                self._add_ratios(tf, pf, ok)

    def _add_ratios(self, tf: np.ndarray, pf: np.ndarray, ok: np.ndarray) -> None:
        """Histogram ln(pf / tf) (K, B) where ``ok``, by the true r magnitude of the pair."""
        mag_bin = self._bin(nmgy_to_mag(torch.from_numpy(tf[:, self.ref_band])).numpy())
        pair, band = np.nonzero(ok)
        idx = ratio_bins(pf[pair, band], tf[pair, band])
        np.add.at(self.flux_log_hist, (mag_bin[pair], band, idx), 1)

    def metrics(self) -> dict[str, Any]:
        precision = _rate(self.n_matched, self.n_pred)
        recall = _rate(self.n_matched, self.n_true)
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        pairs = zip(self.flux_err_sum, self.flux_count, strict=True)
        mape = [_rate(float(s), float(c)) for s, c in pairs]
        recall_by_mag = self._table(self.true_matched_bins, self.true_bins)
        precision_by_mag = self._table(self.pred_matched_bins, self.pred_bins)
        f1_by_mag = [
            None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
            for p, r in zip(precision_by_mag["rates"], recall_by_mag["rates"], strict=True)
        ]
        labels = recall_by_mag["labels"]
        flux_ratio = None
        if self.flux_count.any():
            bright = [hi <= BRIGHT_MAG for hi in [*self.mag_bins, math.inf]]
            flux_ratio = {
                **ratio_table(self.flux_log_hist, labels, bright),
                "bright_mag": BRIGHT_MAG,
            }
        return {
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "n_matched": self.n_matched,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "classification_accuracy": _rate(self.n_class_correct, self.n_classified),
            "n_classified": self.n_classified,
            "flux_mape": mape if self.flux_count.any() else None,
            "recall_by_mag": recall_by_mag,
            "precision_by_mag": precision_by_mag,
            "f1_by_mag": {"labels": labels, "rates": f1_by_mag},
            "flux_ratio": flux_ratio,
        }

    def _table(self, matched: np.ndarray, total: np.ndarray) -> dict[str, Any]:
        """Binned rates: ``len(edges) + 1`` bins (underflow, edges pairs, overflow)."""
        e = self.mag_bins
        inner = [f"[{a:g}, {b:g})" for a, b in zip(e, e[1:], strict=False)]
        return {
            "edges": list(e),
            "labels": [f"< {e[0]:g}", *inner, f">= {e[-1]:g}"] if e else ["all"],
            "n": total.tolist(),
            "n_matched": matched.tolist(),
            "rates": [_rate(m, n) for m, n in zip(matched, total, strict=True)],
        }
