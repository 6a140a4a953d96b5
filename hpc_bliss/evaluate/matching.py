"""One-to-one matching of true and predicted sources by pixel distance (Hungarian assignment)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from hpc_bliss.catalog import FullCatalog

Matches = tuple[np.ndarray, np.ndarray]


def _empty() -> Matches:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def _as_points(x: object, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 2)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (K, 2), got {a.shape}")
    return a


def match_sources(true_plocs: np.ndarray, pred_plocs: np.ndarray, slack: float) -> Matches:
    """Pair true (K, 2) and predicted (L, 2) pixel positions one-to-one within ``slack`` pixels.

    Returns index arrays ``(true_idx, pred_idx)`` (int64, same length, sorted by ``true_idx``):
    ``true_plocs[true_idx[j]]`` is matched with ``pred_plocs[pred_idx[j]]`` and their Euclidean
    distance is ``<= slack``. The assignment (scipy's ``linear_sum_assignment``) first maximises
    the number of pairs within ``slack``, then minimises their summed distance: pairs beyond
    ``slack`` (or with non-finite positions) cost more than any set of admissible pairs, so a
    distant pair never pushes out admissible ones (unlike assign-then-threshold).
    """
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    t, p = _as_points(true_plocs, "true_plocs"), _as_points(pred_plocs, "pred_plocs")
    if len(t) == 0 or len(p) == 0:
        return _empty()
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(((t[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        ok = np.isfinite(dist) & (dist <= slack)
    if not ok.any():
        return _empty()
    # Any admissible set costs <= min(K, L) * max_ok < big, so one more pair always wins.
    big = 1.0 + min(len(t), len(p)) * float(dist[ok].max())
    rows, cols = linear_sum_assignment(np.where(ok, dist, big))
    keep = ok[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def match_catalogs(truth: FullCatalog, pred: FullCatalog, slack: float) -> list[Matches]:
    """Per-image :func:`match_sources` of the active sources of two catalogs of N images.

    Indices are slots of each image (active slots are ``0 .. n_sources - 1``).
    """
    if truth.batch_size != pred.batch_size:
        raise ValueError(f"truth has {truth.batch_size} images, pred has {pred.batch_size}")
    t_n, p_n = truth["n_sources"].cpu().tolist(), pred["n_sources"].cpu().tolist()
    t_locs = truth["plocs"].detach().cpu().double().numpy()
    p_locs = pred["plocs"].detach().cpu().double().numpy()
    return [
        match_sources(t_locs[i, : t_n[i]], p_locs[i, : p_n[i]], slack)
        for i in range(truth.batch_size)
    ]
