"""Posterior calibration: interval conventions, coverage, ECE and exact merging, on synthetic
samples with known answers (no trained encoder)."""

import json
import math

import numpy as np
import pytest
import torch

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.evaluate.calibration import (
    LEVELS,
    MIN_FLUX_SAMPLES,
    CalibrationBatch,
    CalibrationCounts,
    calibration_batch,
    catalog_slots,
    coverage,
)
from hpc_bliss.model.encoder import Encoder

N_BANDS = 5  # r (REF_BAND 2) among them


def _truth(n: torch.Tensor, flux: torch.Tensor | None = None) -> TileCatalog:
    """Interior truth (N, H, W) with ``n`` sources per tile; slot 0's fluxes ``flux``."""
    shape = tuple(n.shape)
    m = 4
    fluxes = torch.full((*shape, m, N_BANDS), 5.0)
    if flux is not None:
        fluxes[..., 0, :] = flux
    data = {
        "n_sources": n.long(),
        "locs": torch.full((*shape, m, 2), 0.5),
        "star_fluxes": fluxes,
        "source_type": torch.zeros((*shape, m, 1), dtype=torch.long),
    }
    return TileCatalog(2, data).zero_inactive()


def _batch(counts: torch.Tensor, fluxes: torch.Tensor | None = None, nll=None) -> CalibrationBatch:
    n, s, h, w = counts.shape
    fluxes = torch.ones(n, s, h, w, N_BANDS) if fluxes is None else fluxes
    return CalibrationBatch(counts, fluxes, torch.zeros(n, h, w) if nll is None else nll)


def _binomial_tolerance(p: float, n: int) -> float:
    """Four binomial standard deviations of an observed rate, plus 0.01 for the finite S."""
    return 4 * math.sqrt(p * (1 - p) / n) + 0.01


def test_interval_convention_on_a_hand_example():
    samples = np.array([[0] * 60 + [1] * 30 + [2] * 10] * 3, dtype=float)
    valid = np.ones(samples.shape, bool)
    # 80%: α/2 = 0.1 -> lower = largest v with P(X < v) <= 0.1 = 0, upper = smallest v with
    # P(X > v) <= 0.1 = 1
    covered, pit = coverage(samples, valid, np.array([0.0, 1.0, 2.0]), 80)
    assert covered.tolist() == [True, True, False]
    # PIT uniform on [P(X < t), P(X <= t)]: t = 0 -> [0, 0.6] ∩ [0.1, 0.9] = 5/6 of it
    assert pit == pytest.approx([50 / 60, 1.0, 0.0])
    # 50%: P(X > 0) = 0.4 > 0.25, so upper = 1; with the ones left out (60 zeros, 10 twos)
    # P(X > 0) = 1/7 <= 0.25 and the interval is [0, 0]: only valid samples count
    truth = np.array([0.0, 1.0, 2.0])
    assert coverage(samples, valid, truth, 50)[0].tolist() == [True, True, False]
    assert coverage(samples, samples != 1, truth, 50)[0].tolist() == [True, False, False]


def test_coverage_is_nominal_for_a_calibrated_sampler_and_low_for_a_narrow_one():
    rng = np.random.default_rng(0)
    t, s = 4000, 200
    lam = rng.uniform(2, 30, t)
    samples = rng.poisson(lam[:, None], (t, s)).astype(float)
    truth = rng.poisson(lam).astype(float)
    narrow = np.rint(lam[:, None] + (samples - lam[:, None]) / 3)
    normal = rng.normal(0, 1, (t, s))
    valid = np.ones((t, s), bool)
    for level in LEVELS:
        p, tol = level / 100, _binomial_tolerance(level / 100, t)
        covered, pit = coverage(samples, valid, truth, level)
        assert abs(pit.mean() - p) < tol, (level, pit.mean())
        assert covered.mean() > p - tol  # the discrete interval holds at least the level
        covered, pit = coverage(narrow, valid, truth, level)
        assert covered.mean() < p - 0.2 and pit.mean() < p - 0.2, level
        covered, pit = coverage(normal, valid, rng.normal(0, 1, t), level)
        assert abs(covered.mean() - p) < tol and abs(pit.mean() - p) < tol


def _class_samples(probs: np.ndarray, s: int) -> np.ndarray:
    """(T, S) counts with exactly round(S p_c) samples of each class c: p̂ = p."""
    k = np.rint(probs * s).astype(int)
    return np.stack([np.repeat(np.arange(len(row)), row) for row in k])


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(1)
    menu = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.05, 0.15, 0.8], [0.4, 0.4, 0.2]])
    h = w = 120
    choice = rng.integers(len(menu), size=h * w)
    probs = menu[choice]
    truth = np.array([rng.choice(3, p=p) for p in probs]).reshape(1, h, w)
    s = 100
    calibrated = _class_samples(probs, s).T.reshape(1, s, h, w)
    overconfident = np.broadcast_to(probs.argmax(1).reshape(1, 1, h, w), (1, s, h, w))
    eces = {}
    for name, counts in (("calibrated", calibrated), ("overconfident", overconfident)):
        acc = CalibrationCounts(s, 2, N_BANDS)
        acc.update(_truth(torch.from_numpy(truth)), _batch(torch.from_numpy(counts.copy())))
        eces[name] = acc.metrics()["reliability"]
    assert eces["calibrated"]["ece"] < 0.01 and eces["calibrated"]["top_label"]["ece"] < 0.02
    assert eces["overconfident"]["ece"] > 0.15 and eces["overconfident"]["top_label"]["ece"] > 0.3
    rel = eces["calibrated"]
    assert sum(rel["n"]) == 3 * h * w and rel["classes"] == ["0", "1", ">=2"]
    assert rel["mean_predicted"][7] == pytest.approx(0.7)  # bin [0.7, 0.8): p̂ = 0.7 only


def _random_case(seed: int, n_img: int = 4, s: int = 40, h: int = 17, w: int = 18):
    g = torch.Generator().manual_seed(seed)
    true_n = torch.randint(0, 4, (n_img, h, w), generator=g)
    counts = torch.randint(0, 3, (n_img, s, h, w), generator=g)
    counts[:, : s // 2][true_n[:, None].expand(-1, s // 2, -1, -1) == 1] = 1
    fluxes = torch.rand(n_img, s, h, w, N_BANDS, generator=g) * 10
    true_flux = torch.rand(n_img, h, w, N_BANDS, generator=g) * 10
    nll = torch.randn(n_img, h, w, generator=g, dtype=torch.float64) * 3
    nll[0, 0, 0] = math.inf
    return _truth(true_n, true_flux), _batch(counts, fluxes, nll)


def test_merged_halves_equal_one_pass():
    truth, batch = _random_case(2)
    whole = CalibrationCounts(batch.counts.shape[1], 2, N_BANDS)
    whole.update(truth, batch)
    halves = []
    for part in (slice(0, 1), slice(1, 4)):
        acc = CalibrationCounts(batch.counts.shape[1], 2, N_BANDS)
        acc.update(truth.select(part), _batch(*(x[part] for x in batch.__dict__.values())))
        halves.append(CalibrationCounts.from_dict(json.loads(json.dumps(acc.to_dict()))))
    merged = halves[0] + halves[1]
    assert merged.to_dict() == whole.to_dict()
    assert merged.metrics() == whole.metrics()
    m = whole.metrics()
    assert m["nll"]["nonfinite_tiles"] == 1 and m["nll"]["tiles"] == 4 * 17 * 18 - 1
    assert m["count_coverage"]["region"]["n"] == 4 * 2 * 2  # 2 × 2 regions of 8 × 8 tiles
    flux = m["flux_coverage"]
    assert flux["tiles_single"] == int((truth["n_sources"] == 1).sum())
    assert 0 < flux["tiles_qualified"] <= flux["tiles_single"]
    with pytest.raises(ValueError):
        _ = whole + CalibrationCounts(7, 2, N_BANDS)


def test_flux_intervals_need_enough_one_source_samples():
    s = 30
    true_n = torch.tensor([[[1, 1, 0]]])
    counts = torch.zeros(1, s, 1, 3, dtype=torch.long)
    counts[0, :MIN_FLUX_SAMPLES, 0, 0] = 1  # enough samples with one source
    counts[0, : MIN_FLUX_SAMPLES - 1, 0, 1] = 1  # one too few
    fluxes = torch.linspace(1, 2, s)[None, :, None, None, None].expand(1, s, 1, 3, N_BANDS)
    acc = CalibrationCounts(s, 2, N_BANDS)
    acc.update(_truth(true_n, torch.full((1, 1, 3, N_BANDS), 1.2)), _batch(counts, fluxes))
    flux = acc.metrics()["flux_coverage"]
    assert (flux["tiles_single"], flux["tiles_qualified"]) == (2, 1)
    # the 10 qualifying samples run from 1 to 1.31: 1.2 is inside their 50% interval
    assert flux["interval"][0] == [1.0] * N_BANDS


def test_samples_depend_on_the_image_identity_only():
    torch.manual_seed(0)
    encoder = Encoder(N_BANDS, 2, hidden=8, n_blocks=1).eval()
    images = torch.randn(3, N_BANDS, 12, 12) * 0.3
    with torch.no_grad():
        features = encoder(images)
    truth = _truth(torch.randint(0, 2, (3, 6, 6)))
    ids = [(5, 0), (5, 1), (9, 0)]
    one = calibration_batch(encoder, features, truth, ids, 20, seed=3, min_flux=0.0)
    order = [2, 0, 1]
    other = calibration_batch(
        encoder, features[order], truth.select(order), [ids[i] for i in order], 20, 3, 0.0
    )
    assert torch.equal(one.counts[order], other.counts)
    assert torch.equal(one.fluxes[order], other.fluxes)
    assert one.counts.shape == (3, 20, 4, 4)  # the encoder's border tile dropped
    assert not torch.equal(one.counts[0], one.counts[1])  # another image, other draws
    again = calibration_batch(encoder, features, truth, ids, 20, seed=4, min_flux=0.0)
    assert not torch.equal(one.counts, again.counts)
    assert catalog_slots(encoder, N_BANDS, 12, 12, "cpu") == 2
