"""One-to-one matching of true and predicted sources by pixel distance (Hungarian assignment).

Two rules share one mechanism, the admissibility mask of a pair: position only (distance <=
``slack``), and with ``mag_slack`` also the magnitude (|true mag - predicted mag| <= ``mag_slack``
in one band, as in the literature's rule of 0.5 px and 0.5 mag in r).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from hpc_bliss.catalog import REF_BAND, FullCatalog, nmgy_to_mag

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


def match_sources(
    true_plocs: np.ndarray,
    pred_plocs: np.ndarray,
    slack: float,
    *,
    true_mags: np.ndarray | None = None,
    pred_mags: np.ndarray | None = None,
    mag_slack: float | None = None,
) -> Matches:
    """Pair true (K, 2) and predicted (L, 2) pixel positions one-to-one within ``slack`` pixels.

    Returns index arrays ``(true_idx, pred_idx)`` (int64, same length, sorted by ``true_idx``):
    ``true_plocs[true_idx[j]]`` is matched with ``pred_plocs[pred_idx[j]]`` and their Euclidean
    distance is ``<= slack``. The assignment (scipy's ``linear_sum_assignment``) first maximises
    the number of pairs within ``slack``, then minimises their summed distance: pairs beyond
    ``slack`` (or with non-finite positions) cost more than any set of admissible pairs, so a
    distant pair never pushes out admissible ones (unlike assign-then-threshold).

    With ``mag_slack``, a pair is admissible only if also ``|true_mags - pred_mags| <=
    mag_slack`` (magnitudes (K,) and (L,); a non-finite difference, e.g. a flux <= 0, is never
    admissible); the cost of admissible pairs stays their distance.
    """
    if slack < 0 or (mag_slack is not None and mag_slack < 0):
        raise ValueError(f"slack and mag_slack must be >= 0, got {slack}, {mag_slack}")
    t, p = _as_points(true_plocs, "true_plocs"), _as_points(pred_plocs, "pred_plocs")
    if len(t) == 0 or len(p) == 0:
        return _empty()
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(((t[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        ok = np.isfinite(dist) & (dist <= slack)
        if mag_slack is not None:
            if true_mags is None or pred_mags is None:
                raise ValueError("mag_slack needs true_mags and pred_mags")
            tm, pm = (np.asarray(m, np.float64).reshape(-1) for m in (true_mags, pred_mags))
            if (len(tm), len(pm)) != (len(t), len(p)):
                raise ValueError(f"{len(tm)}, {len(pm)} magnitudes for {len(t)}, {len(p)} sources")
            dmag = np.abs(tm[:, None] - pm[None, :])
            ok &= np.isfinite(dmag) & (dmag <= mag_slack)
    if not ok.any():
        return _empty()
    # Any admissible set costs <= min(K, L) * max_ok < big, so one more pair always wins.
    big = 1.0 + min(len(t), len(p)) * float(dist[ok].max())
    rows, cols = linear_sum_assignment(np.where(ok, dist, big))
    keep = ok[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def _mags(cat: FullCatalog, band: int) -> np.ndarray:
    """Magnitudes (N, M) float64 in ``band`` of every slot (+inf where the flux is <= 0)."""
    if cat.fluxes.shape[-1] == 1:  # one flux band: it is ``band``
        band = 0
    return nmgy_to_mag(cat.fluxes[..., band].detach().cpu().double()).numpy()


def match_catalogs(
    truth: FullCatalog,
    pred: FullCatalog,
    slack: float,
    *,
    mag_slack: float | None = None,
    band: int = REF_BAND,
) -> list[Matches]:
    """Per-image :func:`match_sources` of the active sources of two catalogs of N images; with
    ``mag_slack``, pairs must also agree within ``mag_slack`` magnitudes in ``band`` (both
    catalogs need fluxes; a catalog of one flux band is read as ``band``).

    Indices are slots of each image (active slots are ``0 .. n_sources - 1``).
    """
    if truth.batch_size != pred.batch_size:
        raise ValueError(f"truth has {truth.batch_size} images, pred has {pred.batch_size}")
    t_n, p_n = truth["n_sources"].cpu().tolist(), pred["n_sources"].cpu().tolist()
    t_locs = truth["plocs"].detach().cpu().double().numpy()
    p_locs = pred["plocs"].detach().cpu().double().numpy()
    mags = None if mag_slack is None else (_mags(truth, band), _mags(pred, band))
    return [
        match_sources(
            t_locs[i, : t_n[i]],
            p_locs[i, : p_n[i]],
            slack,
            true_mags=None if mags is None else mags[0][i, : t_n[i]],
            pred_mags=None if mags is None else mags[1][i, : p_n[i]],
            mag_slack=mag_slack,
        )
        for i in range(truth.batch_size)
    ]
