"""Posterior calibration of the encoder from S samples of q per image, kept as exact sums.

For each held-out image the encoder's features are computed once and S catalogs are drawn from
q (:func:`sample_image`), with a generator seeded from the config seed and the image's identity
(shard id, row in the shard), never from the rank or the batch: the samples, hence every
number here, are the same however the images are split across processes. On interior tiles:

* **count reliability**: per tile and count class c (0 .. ``max_count``, the most sources the
  encoder's catalogs hold per tile (:func:`catalog_slots`); the last class reads ">=
  max_count" for the truth, which the training loss clips so too), p̂(c) = k_c / S, the
  fraction of samples with that count. The (tile, class) entries are binned by p̂ into
  ``N_PROB_BINS`` equal bins (bin ``min(10 k_c // S, 9)``: integer arithmetic, no rounding at
  the edges), and per bin the entries, the sum of k_c and the entries whose true class is c are
  counted. ECE is the entry-weighted mean over bins of |mean p̂ - observed frequency| (pooled
  over classes; also per class, and "top-label": the most probable class, ties to the
  smaller, with its p̂);
* **coverage** of central credible intervals (``LEVELS`` percent) of the number of sources per
  image and per region of ``REGION_TILES`` × ``REGION_TILES`` interior tiles (regions laid from
  the interior's top-left corner; those that do not fit are left out), and of each band's flux of
  a lone source: tiles with exactly one true source, and the samples in which that tile also has
  exactly one source (at least ``MIN_FLUX_SAMPLES`` of them, else the tile does not qualify);
  see :func:`coverage` for the two conventions reported;
* **NLL**: -log q(true catalog | image) per interior tile (the training loss), as a mean per
  interior tile and a sum per image.

Counts are integers; the fractional (PIT) coverages and the NLL are each rounded once, per tile
or per image, to a multiple of 2⁻³² and summed as Python integers: merging is exact, and the
same per-image values give the same totals however the images are split across processes. The
NLL is a float function of the network's float32 outputs, which torch computes differently in
the last bits with another CPU thread count (1 process with 2 threads, 2 with 1 each): there
it agrees to ~1e-9 relative, not bitwise; every count agrees exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.model.loss import double_detection_nll
from hpc_bliss.seeding import make_generator

LEVELS = (50, 80, 90)  #: central credible intervals, percent
N_PROB_BINS = 10  #: bins of p̂ in the reliability diagram
REGION_TILES = 8  #: side of the regions whose counts are covered, tiles
MIN_FLUX_SAMPLES = 10  #: samples with one source a tile needs for its flux intervals
SCOPES = ("image", "region")  #: what the count intervals are of
FIX = 2**32  #: fixed-point scale of the fractional sums


def _fixed(x: np.ndarray | float) -> int:
    """Sum of float64 values each rounded to a multiple of 1 / FIX, as an exact integer."""
    return sum(int(v) for v in np.rint(np.asarray(x, np.float64).reshape(-1) * FIX))


def coverage(
    values: np.ndarray, valid: np.ndarray, truth: np.ndarray, level: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whether the truth lies in the central ``level``% interval of samples, two conventions.

    ``values`` (T, S) samples, ``valid`` (T, S) which of them count (n per row, n >= 1),
    ``truth`` (T,). With α = 1 - level / 100 and X the n valid samples of a row:

    * ``covered`` (T,) bool: lower <= truth <= upper, lower the largest v with P(X < v) <= α/2
      (the sorted sample of index ⌊n α / 2⌋, from 0) and upper the smallest v with P(X > v) <=
      α/2 (index n - 1 - ⌊n α / 2⌋). For integer counts it holds at least ``level``% of the
      samples (ties at the ends are inside), so a calibrated q covers at least nominally;
    * ``pit`` (T,) in [0, 1]: the probability that the randomised PIT u, uniform on
      [P(X < truth), P(X <= truth)], lies in [α/2, 1 - α/2]. If the truth is drawn from the
      samples' distribution u is uniform, so its mean is the nominal level even for counts.

    Integer arithmetic on ``level`` keeps the ends exact (no rounding of n α / 2).
    """
    n = valid.sum(1)
    j = (n * (100 - level)) // 200
    ordered = np.sort(np.where(valid, values, np.inf), axis=1)
    rows = np.arange(len(n))
    lower, upper = ordered[rows, j], ordered[rows, np.maximum(n - 1 - j, 0)]
    covered = (lower <= truth) & (truth <= upper)
    below = (valid & (values < truth[:, None])).sum(1)
    at_most = (valid & (values <= truth[:, None])).sum(1)
    lo = n * (100 - level) / 200
    hi = n - lo
    overlap = np.clip(np.minimum(at_most, hi) - np.maximum(below, lo), 0, None)
    point = ((below >= lo) & (below <= hi)).astype(np.float64)
    pit = np.where(at_most > below, overlap / np.maximum(at_most - below, 1), point)
    return covered, pit


def sample_image(
    encoder: Any, features: Tensor, index: int, n_samples: int, generator: torch.Generator
) -> TileCatalog:
    """S = ``n_samples`` catalogs (S, ...) drawn from q for image ``index`` of the batch's tile
    ``features`` (N, C, Ht, Wt), reusing them (no second pass through the network)."""
    one = features[index : index + 1].expand(n_samples, *features.shape[1:])
    return encoder.sample_features(one, use_mode=False, generator=generator)


@torch.no_grad()
def catalog_slots(encoder: Any, n_bands: int, height: int, width: int, device: Any) -> int:
    """The most sources per tile the encoder's catalogs hold (their slot dimension), read from
    the catalog it returns for a blank image of ``height`` × ``width`` pixels."""
    blank = torch.zeros(1, n_bands, height, width, device=device)
    return int(encoder.sample_features(encoder(blank))["locs"].shape[3])


def image_generator(seed: int, shard_id: int, row: int, device: torch.device) -> torch.Generator:
    """The sampling generator of one image: config seed and the image's (shard id, row)."""
    return make_generator(seed, "evaluate-calibration", shard_id, row, device=device)


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """Centre crop of the tile dimensions (1, 2) of ``x`` to ``height`` × ``width`` tiles."""
    dh, dw = x.shape[1] - height, x.shape[2] - width
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot crop {tuple(x.shape[1:3])} tiles to {height}×{width}")
    return x[:, dh // 2 : x.shape[1] - dh // 2, dw // 2 : x.shape[2] - dw // 2]


@dataclass
class CalibrationBatch:
    """What calibration needs of one batch's S posterior samples per image: the sampled counts
    (N, S, Ht, Wt) and the fluxes of each tile's first source (N, S, Ht, Wt, B); and -log q of
    the true catalog per tile (N, Ht, Wt). Any border: they are cropped to the scored tiles."""

    counts: Tensor
    fluxes: Tensor
    nll: Tensor


@torch.no_grad()
def calibration_batch(
    encoder: Any,
    features: Tensor,
    truth: TileCatalog,
    ids: list[tuple[int, int]],
    n_samples: int,
    seed: int,
    min_flux: float,
) -> CalibrationBatch:
    """Draw S = ``n_samples`` catalogs per image from the tile ``features`` of a batch (image i
    is row ``ids[i][1]`` of shard ``ids[i][0]``: it seeds the draws), and score the batch's
    ``truth`` (every tile, unfiltered: the NLL applies ``min_flux`` as the training loss does)."""
    counts, fluxes = [], []
    for i, (shard_id, row) in enumerate(ids):
        g = image_generator(seed, shard_id, row, features.device)
        cat = sample_image(encoder, features, i, n_samples, g)
        counts.append(cat["n_sources"].cpu())
        fluxes.append(cat.fluxes[..., 0, :].float().cpu())
    nll = double_detection_nll(encoder, features, truth.to(features.device), min_flux=min_flux)
    return CalibrationBatch(torch.stack(counts), torch.stack(fluxes), nll.cpu())


def _region_sums(n: Tensor) -> Tensor:
    """(S, Ht, Wt) counts -> (S, R) sums over the REGION_TILES-square regions that fit."""
    r = REGION_TILES
    hr, wr = n.shape[1] // r, n.shape[2] // r
    blocks = n[:, : hr * r, : wr * r].reshape(n.shape[0], hr, r, wr, r)
    return blocks.sum((2, 4)).reshape(n.shape[0], hr * wr)


def _added(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _added(a[k], b[k]) for k in a}
    if isinstance(a, list):
        return [_added(x, y) for x, y in zip(a, b, strict=True)]
    return a + b


def _rate(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


class CalibrationCounts:
    """Every calibration count of one process; ``a + b`` merges two exactly."""

    _CONFIG = ("n_samples", "max_count", "n_bands")
    _ARRAYS = ("rel", "top", "count_n", "count_covered", "flux_tiles", "flux_covered")
    _INTS = ("count_pit", "flux_pit", "nll")  # Python integers: fixed-point sums

    def __init__(self, n_samples: int, max_count: int, n_bands: int) -> None:
        if n_samples < 1 or max_count < 1:
            raise ValueError(f"need n_samples, max_count >= 1, got {n_samples}, {max_count}")
        self.n_samples, self.max_count, self.n_bands = n_samples, max_count, n_bands
        n_levels = len(LEVELS)
        #: (entries, sum of k_c, true class is c) per class and p̂ bin
        self.rel = np.zeros((3, max_count + 1, N_PROB_BINS), np.int64)
        #: (entries, sum of the top k, top class is the true one) per p̂ bin
        self.top = np.zeros((3, N_PROB_BINS), np.int64)
        self.count_n = np.zeros(len(SCOPES), np.int64)
        self.count_covered = np.zeros((len(SCOPES), n_levels), np.int64)
        self.count_pit = [[0] * n_levels for _ in SCOPES]
        self.flux_tiles = np.zeros(2, np.int64)  #: tiles with one true source, qualified ones
        self.flux_covered = np.zeros((n_levels, n_bands), np.int64)
        self.flux_pit = [[0] * n_bands for _ in LEVELS]
        self.nll = [0, 0, 0, 0]  #: fixed-point sum, finite tiles, images, non-finite tiles

    def update(self, truth: TileCatalog, batch: CalibrationBatch) -> None:
        """Add a batch: ``truth`` is the scored truth on the interior tiles (N, Hi, Wi); the
        samples and NLL of ``batch`` are cropped to the same tiles."""
        hi, wi = truth.n_tiles_h, truth.n_tiles_w
        true_n = truth["n_sources"].cpu().long()
        true_flux = truth.fluxes[..., 0, :].detach().cpu().double()
        if batch.counts.shape[:2] != (len(true_n), self.n_samples):
            raise ValueError(f"samples {tuple(batch.counts.shape[:2])} != ({len(true_n)}, S)")
        for i in range(len(true_n)):
            s_n = crop_to(batch.counts[i].long(), hi, wi)
            s_flux = crop_to(batch.fluxes[i].double(), hi, wi)
            self._reliability(s_n.numpy(), true_n[i].numpy())
            self._counts(s_n, true_n[i])
            self._fluxes(s_n.numpy(), s_flux.numpy(), true_n[i].numpy(), true_flux[i].numpy())
        nll = crop_to(batch.nll.detach().cpu().double(), hi, wi).reshape(len(true_n), -1).numpy()
        finite = np.isfinite(nll)
        self.nll[0] += _fixed(np.where(finite, nll, 0.0).sum(1))
        self.nll[1] += int(finite.sum())
        self.nll[2] += len(nll)
        self.nll[3] += int((~finite).sum())

    def _reliability(self, s_n: np.ndarray, t_n: np.ndarray) -> None:
        s, m = self.n_samples, self.max_count
        sc, tc = s_n.clip(max=m).reshape(s, -1), t_n.clip(max=m).reshape(-1)
        classes = np.arange(m + 1)[:, None]
        k = (sc[None] == classes[..., None]).sum(1)  # (C, T) samples per class
        bins = np.minimum(N_PROB_BINS * k // s, N_PROB_BINS - 1)
        at = (np.broadcast_to(classes, k.shape), bins)
        for row, value in enumerate((1, k, tc[None] == classes)):
            np.add.at(self.rel[row], at, value)
        top_k, top_class = k.max(0), k.argmax(0)
        top_bin = np.minimum(N_PROB_BINS * top_k // s, N_PROB_BINS - 1)
        for row, value in enumerate((1, top_k, top_class == tc)):
            np.add.at(self.top[row], top_bin, value)

    def _counts(self, s_n: Tensor, t_n: Tensor) -> None:
        per_scope = (
            (s_n.sum((1, 2))[None].numpy(), t_n.sum()[None].numpy()),
            (_region_sums(s_n).T.numpy(), _region_sums(t_n[None])[0].numpy()),
        )
        for k, (values, truth) in enumerate(per_scope):
            if len(truth) == 0:
                continue
            self.count_n[k] += len(truth)
            valid = np.ones(values.shape, bool)
            for j, level in enumerate(LEVELS):
                covered, pit = coverage(values, valid, truth, level)
                self.count_covered[k, j] += int(covered.sum())
                self.count_pit[k][j] += _fixed(pit)

    def _fluxes(self, s_n: np.ndarray, s_flux: np.ndarray, t_n: np.ndarray, t_flux: np.ndarray):
        s, b = self.n_samples, self.n_bands
        single = t_n.reshape(-1) == 1
        valid = (s_n.reshape(s, -1)[:, single] == 1).T  # (T1, S)
        ok = valid.sum(1) >= MIN_FLUX_SAMPLES
        self.flux_tiles += (int(single.sum()), int(ok.sum()))
        if not ok.any():
            return
        values = s_flux.reshape(s, -1, b)[:, single][:, ok].transpose(1, 0, 2)  # (T, S, B)
        truth = t_flux.reshape(-1, b)[single][ok]  # (T, B)
        for band in range(b):
            for j, level in enumerate(LEVELS):
                covered, pit = coverage(values[..., band], valid[ok], truth[:, band], level)
                self.flux_covered[j, band] += int(covered.sum())
                self.flux_pit[j][band] += _fixed(pit)

    def to_dict(self) -> dict[str, Any]:
        """Settings and counts as plain ints and (nested) lists (JSON- and MPI-friendly)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._CONFIG}
        out.update({k: getattr(self, k).tolist() for k in self._ARRAYS})
        out.update({k: copy.deepcopy(getattr(self, k)) for k in self._INTS})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationCounts:
        out = cls(*(d[k] for k in cls._CONFIG))
        for k in cls._ARRAYS:
            setattr(out, k, np.asarray(d[k], np.int64).reshape(getattr(out, k).shape))
        for k in cls._INTS:
            setattr(out, k, [list(v) if isinstance(v, list) else int(v) for v in d[k]])
        return out

    def __add__(self, other: CalibrationCounts) -> CalibrationCounts:
        a, b = self.to_dict(), other.to_dict()
        if any(a[k] != b[k] for k in self._CONFIG):
            raise ValueError(f"cannot add CalibrationCounts with different {self._CONFIG}")
        return CalibrationCounts.from_dict(
            {k: a[k] if k in self._CONFIG else _added(a[k], b[k]) for k in a}
        )

    def metrics(self) -> dict[str, Any]:
        """ECE and reliability tables, coverage (nominal vs observed) and the NLL."""
        cov = {
            scope: {
                "n": int(self.count_n[k]),
                "interval": [_rate(c, self.count_n[k]) for c in self.count_covered[k]],
                "pit": [_rate(v / FIX, self.count_n[k]) for v in self.count_pit[k]],
            }
            for k, scope in enumerate(SCOPES)
        }
        qualified = int(self.flux_tiles[1])
        flux = {
            "tiles_single": int(self.flux_tiles[0]),
            "tiles_qualified": qualified,
            "interval": [[_rate(c, qualified) for c in row] for row in self.flux_covered],
            "pit": [[_rate(v / FIX, qualified) for v in row] for row in self.flux_pit],
        }
        total, tiles, images, nonfinite = self.nll
        nll = {
            "per_tile": _rate(total / FIX, tiles),
            "per_image": _rate(total / FIX, images),
            "tiles": tiles,
            "images": images,
            "nonfinite_tiles": nonfinite,
        }
        return {
            "n_samples": self.n_samples,
            "levels": list(LEVELS),
            "region_tiles": REGION_TILES,
            "min_flux_samples": MIN_FLUX_SAMPLES,
            "reliability": self._reliability_metrics(),
            "count_coverage": cov,
            "flux_coverage": flux,
            "nll": nll,
        }

    def _reliability_metrics(self) -> dict[str, Any]:
        s = self.n_samples

        def table(n: np.ndarray, k: np.ndarray, hits: np.ndarray) -> dict[str, Any]:
            gap = np.abs(k / s - hits).sum()
            return {
                "n": n.tolist(),
                "mean_predicted": [_rate(a / s, b) for a, b in zip(k, n, strict=True)],
                "observed": [_rate(a, b) for a, b in zip(hits, n, strict=True)],
                "ece": _rate(gap, n.sum()),
            }

        n, k, hits = self.rel
        pooled = table(n.sum(0), k.sum(0), hits.sum(0))
        classes = [table(n[c], k[c], hits[c]) for c in range(self.max_count + 1)]
        width = 1 / N_PROB_BINS
        return {
            "bin_edges": [round(i * width, 10) for i in range(N_PROB_BINS + 1)],
            "classes": [str(c) for c in range(self.max_count)] + [f">={self.max_count}"],
            **pooled,
            "per_class": classes,
            "top_label": table(*self.top),
        }
