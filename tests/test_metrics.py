"""Source matching and count-based evaluation metrics on hand-made cases with known answers."""

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.evaluate.matching import match_catalogs, match_sources
from hpc_bliss.evaluate.metrics import DetectionCounts, TileCounts, most_frequent_rate

MAG_BINS = [16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0]
N_BANDS = 5


def _cat(images, types=True, n_flux_bands=N_BANDS):
    """FullCatalog from per-image lists of (row, col, flux, type); every band has ``flux``."""
    mf = max(1, *(len(im) for im in images))
    n = len(images)
    plocs, flux, kind = torch.zeros(n, mf, 2), torch.zeros(n, mf, N_BANDS), torch.zeros(n, mf, 1)
    for i, im in enumerate(images):
        for j, (r, c, f, t) in enumerate(im):
            plocs[i, j] = torch.tensor([r, c])
            flux[i, j] = f
            kind[i, j] = t
    data = {"n_sources": torch.tensor([len(im) for im in images]), "plocs": plocs}
    if n_flux_bands:
        f = flux if n_flux_bands == N_BANDS else flux[..., 2:3]
        data["star_fluxes"], data["galaxy_fluxes"] = f, f.clone()
    if types:
        data["source_type"] = kind.long()
    return FullCatalog(40, 40, data)


def _detect(truth, pred, slack=1.0):
    det = DetectionCounts(MAG_BINS, N_BANDS)
    det.update(truth, pred, match_catalogs(truth, pred, slack))
    return det


def test_slack_is_inclusive_and_respected():
    t = np.array([[5.0, 5.0]])
    assert len(match_sources(t, np.array([[5.0, 6.0]]), slack=1.0)[0]) == 1
    ti, pi = match_sources(t, np.array([[5.0, 6.1]]), slack=1.0)
    assert len(ti) == len(pi) == 0
    assert ti.dtype == pi.dtype == np.int64


def test_empty_inputs():
    for t, p in [(np.zeros((0, 2)), np.ones((3, 2))), (np.ones((2, 2)), []), ([], [])]:
        ti, pi = match_sources(t, p, slack=2.0)
        assert ti.shape == pi.shape == (0,)


def test_hungarian_beats_greedy():
    true = np.array([[0.0, 0.0], [0.0, 2.2]])
    pred = np.array([[0.0, 0.9], [0.0, -1.0]])
    slack = 1.5
    # Greedy nearest pairs true 0 with pred 0 (0.9 px), leaving true 1 3.2 px from pred 1.
    dist = np.linalg.norm(true[:, None] - pred[None], axis=-1)
    assert np.unravel_index(dist.argmin(), dist.shape) == (0, 0) and dist[1, 1] > slack
    ti, pi = match_sources(true, pred, slack)
    assert ti.tolist() == [0, 1] and pi.tolist() == [1, 0]


def test_matching_beats_assign_then_threshold():
    """Min-sum assignment pairs t1-p2 (beyond slack) + t2-p1 (0.1 px); two 1.4 px pairs exist."""
    true = np.array([[0.0, 0.0], [0.0, 1.5]])
    pred = np.array([[0.0, 1.4], [1.2874, 0.95]])
    dist = np.linalg.norm(true[:, None] - pred[None], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    assert (dist[rows, cols] <= 1.5).sum() == 1
    ti, pi = match_sources(true, pred, slack=1.5)
    assert ti.tolist() == [0, 1] and pi.tolist() == [0, 1]


def _max_pairs(ok):
    """Brute force: the most pairs of a one-to-one matching allowed by ``ok`` (K, L)."""
    ok = ok.T if ok.shape[0] > ok.shape[1] else ok
    perms = itertools.permutations(range(ok.shape[1]), ok.shape[0])
    return max(sum(ok[i, j] for i, j in enumerate(perm)) for perm in perms)


def test_matching_maximises_pairs_within_slack():
    rng = np.random.default_rng(0)
    for _ in range(60):
        t = rng.uniform(0, 4, (rng.integers(0, 5), 2))
        p = rng.uniform(0, 4, (rng.integers(0, 5), 2))
        ti, pi = match_sources(t, p, slack=1.5)
        assert len(set(ti)) == len(ti) and len(set(pi)) == len(pi)
        assert (np.linalg.norm(t[ti] - p[pi], axis=-1) <= 1.5).all()
        assert len(ti) == _max_pairs(np.linalg.norm(t[:, None] - p[None], axis=-1) <= 1.5)


def test_match_catalogs_uses_active_sources_only():
    truth = _cat([[(1, 1, 1.0, 0), (9, 9, 1.0, 0)], []])
    pred = _cat([[(9, 9.5, 1.0, 0)], [(3, 3, 1.0, 0)]])
    pred.data["plocs"][1, 0] = 0.0  # an inactive slot at the origin must not match anything
    (t0, p0), (t1, p1) = match_catalogs(truth, pred, slack=1.0)
    assert t0.tolist() == [1] and p0.tolist() == [0]
    assert len(t1) == len(p1) == 0


def test_precision_recall_f1():
    truth = _cat([[(5, 5, 1, 0), (10, 10, 1, 0), (30, 30, 1, 0)]])
    pred = _cat([[(5, 5.5, 1, 0), (10.5, 10, 1, 0), (20, 20, 1, 0), (38, 2, 1, 0)]])
    m = _detect(truth, pred).metrics()
    assert (m["n_true"], m["n_pred"], m["n_matched"]) == (3, 4, 2)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_no_sources_gives_none_rates():
    m = _detect(_cat([[]]), _cat([[]])).metrics()
    assert m["precision"] is m["recall"] is m["f1"] is m["flux_mape"] is None


def test_magnitude_binning_of_one_nanomaggy():
    truth = _cat([[(5, 5, 1.0, 0), (20, 20, 100.0, 0)]])  # 22.5 mag and 17.5 mag
    pred = _cat([[(5, 5, 1.0, 0)]])
    m = _detect(truth, pred).metrics()
    rec, prec = m["recall_by_mag"], m["precision_by_mag"]
    assert rec["edges"] == MAG_BINS and len(rec["n"]) == len(MAG_BINS) + 1
    i22 = rec["labels"].index("[22, 23)")
    assert rec["n"][i22] == rec["n_matched"][i22] == 1 and rec["rates"][i22] == 1.0
    i17 = rec["labels"].index("[17, 18)")
    assert rec["n"][i17] == 1 and rec["rates"][i17] == 0.0
    assert sum(rec["n"]) == 2
    assert prec["n"][i22] == 1 and prec["rates"][i22] == 1.0 and prec["rates"][0] is None


def test_flux_mape_and_classification_accuracy():
    truth = _cat([[(5, 5, 10.0, 0), (15, 15, 10.0, 1), (25, 25, 10.0, 1)]])
    pred = _cat([[(5, 5, 12.0, 0), (15, 15, 8.0, 1), (25, 25, 10.0, 0)]])
    m = _detect(truth, pred).metrics()
    assert m["flux_mape"] == pytest.approx([0.4 / 3] * N_BANDS)
    assert m["classification_accuracy"] == pytest.approx(2 / 3) and m["n_classified"] == 3
    single = _detect(_cat([[(5, 5, 10.0, 0)]]), _cat([[(5, 5, 12.0, 0)]])).metrics()
    assert single["flux_mape"] == pytest.approx([0.2] * N_BANDS)


def test_prediction_without_types_or_fluxes():
    truth = _cat([[(5, 5, 10.0, 0), (15, 15, 10.0, 1)]])
    bare = _detect(truth, _cat([[(5, 5, 0, 0)]], types=False, n_flux_bands=0)).metrics()
    assert bare["precision"] == 1.0 and bare["recall"] == 0.5
    assert bare["classification_accuracy"] is None and bare["flux_mape"] is None
    assert bare["precision_by_mag"]["rates"] == [None] * (len(MAG_BINS) + 1)
    one = _detect(truth, _cat([[(5, 5, 12.0, 0)]], types=False, n_flux_bands=1)).metrics()
    assert one["flux_mape"][2] == pytest.approx(0.2)
    assert [x for i, x in enumerate(one["flux_mape"]) if i != 2] == [None] * (N_BANDS - 1)


def test_tile_counts_accuracy_and_confusion():
    tc = TileCounts(max_count=2)
    tc.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 1]]]))
    m = tc.metrics()
    assert m["n_sources_accuracy"] == 0.75 and m["n_sources_within_1"] == 1.0
    assert m["n_tiles"] == 4
    assert m["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    # A 3-source tile is never right for a 2-source prediction, but shares the last row.
    tc.update(torch.tensor([[[2]]]), torch.tensor([[[3]]]))
    m = tc.metrics()
    assert m["n_sources_accuracy"] == 0.6 and m["n_sources_within_1"] == 1.0
    assert m["confusion"][2] == [0, 0, 2]
    assert (m["most_frequent_count"], m["most_frequent_rate"]) == (1, 0.4)


def test_most_frequent_rate():
    assert most_frequent_rate(torch.tensor([[0, 0, 1], [2, 0, 1]])) == (0, 0.5)
    assert most_frequent_rate(torch.zeros(0, dtype=torch.long)) == (0, None)


def test_tile_counts_merge_equals_whole_batch():
    g = torch.Generator().manual_seed(0)
    true_n = torch.randint(0, 4, (6, 5, 5), generator=g)
    pred_n = torch.randint(0, 3, (6, 5, 5), generator=g)
    whole, a, b = TileCounts(2), TileCounts(2), TileCounts(2)
    whole.update(pred_n, true_n)
    a.update(pred_n[:3], true_n[:3])
    b.update(pred_n[3:], true_n[3:])
    merged = TileCounts.from_dict(json.loads(json.dumps(a.to_dict()))) + b
    assert merged.to_dict() == whole.to_dict() == sum([a, b]).to_dict()
    assert merged.metrics() == whole.metrics()
    with pytest.raises(ValueError):
        _ = a + TileCounts(3)


def test_detection_counts_merge_equals_whole_batch():
    rng = np.random.default_rng(1)
    images_t, images_p = [], []
    for _ in range(6):
        t = [
            (*rng.uniform(0, 40, 2), 10 ** rng.uniform(-1, 2), int(rng.integers(2)))
            for _ in range(rng.integers(0, 6))
        ]
        p = [
            (
                r + rng.normal(0, 0.5),
                c + rng.normal(0, 0.5),
                f * rng.uniform(0.5, 1.5),
                int(rng.integers(2)),
            )
            for r, c, f, _ in t
            if rng.random() < 0.8
        ]
        images_t.append(t)
        images_p.append(p + [(*rng.uniform(0, 40, 2), 1.0, 0)])
    truth, pred = _cat(images_t), _cat(images_p)
    whole = _detect(truth, pred, slack=1.5)
    a = _detect(truth.select(slice(0, 3)), pred.select(slice(0, 3)), slack=1.5)
    b = _detect(truth.select(slice(3, 6)), pred.select(slice(3, 6)), slack=1.5)
    merged = DetectionCounts.from_dict(json.loads(json.dumps(a.to_dict()))) + b
    dw, dm = whole.to_dict(), merged.to_dict()
    assert dm.pop("flux_err_sum") == pytest.approx(dw.pop("flux_err_sum"))
    assert dm == dw and whole.n_matched > 0
    assert merged.metrics()["f1"] == pytest.approx(whole.metrics()["f1"])


def test_unmeasured_bands_are_skipped():
    """SEP-like predictions: a reference-band flux, the other bands all zero, no source_type."""
    truth = _cat([[(5, 5, 10.0, 0), (15, 15, 10.0, 1)]])
    pred = _cat([[(5, 5, 12.0, 0), (15, 15, 9.0, 0)]], types=False)
    pred.data["star_fluxes"][..., [0, 1, 3, 4]] = 0.0
    del pred.data["galaxy_fluxes"]
    before = pred["star_fluxes"].clone()
    m = _detect(truth, pred).metrics()
    assert m["flux_mape"][2] == pytest.approx(0.15)
    assert [x for i, x in enumerate(m["flux_mape"]) if i != 2] == [None] * (N_BANDS - 1)
    assert torch.equal(pred["star_fluxes"], before)


def test_strict_rule_needs_distance_and_magnitude():
    t, p = np.array([[5.0, 5.0]]), np.array([[5.0, 5.3]])  # 0.3 px apart
    for dmag, matched in ((1.0, False), (0.2, True), (0.5, True), (-0.2, True)):
        ti, _ = match_sources(t, p, 0.5, true_mags=[20.0], pred_mags=[20.0 + dmag], mag_slack=0.5)
        assert len(ti) == int(matched), dmag
    far = np.array([[5.0, 5.6]])  # same magnitude, 0.6 px: position fails
    assert (
        len(match_sources(t, far, 0.5, true_mags=[20.0], pred_mags=[20.0], mag_slack=0.5)[0]) == 0
    )
    with pytest.raises(ValueError, match="needs true_mags"):
        match_sources(t, p, 0.5, mag_slack=0.5)


def test_strict_rule_on_catalogs_reads_r_band_fluxes():
    truth = _cat([[(5, 5, 10.0, 0), (20, 20, 10.0, 0)]])
    # 0.3 px off each: the first 1 mag fainter, the second 0.2 mag fainter
    pred = _cat([[(5, 5.3, 10.0 * 10**-0.4, 0), (20, 20.3, 10.0 * 10**-0.08, 0)]])
    [(ti, pi)] = match_catalogs(truth, pred, 0.5, mag_slack=0.5)
    assert ti.tolist() == [1] and pi.tolist() == [1]
    [(ti, _)] = match_catalogs(truth, pred, 0.5)  # position only: both
    assert ti.tolist() == [0, 1]
    one_band = _cat(
        [[(5, 5.3, 10.0 * 10**-0.4, 0), (20, 20.3, 10.0 * 10**-0.08, 0)]], n_flux_bands=1
    )
    assert match_catalogs(truth, one_band, 0.5, mag_slack=0.5)[0][0].tolist() == [1]
    # the Hungarian assignment maximises admissible pairs under both conditions
    truth = _cat([[(5, 5, 10.0, 0), (5, 5.4, 20.0, 0)]])
    pred = _cat([[(5, 5.2, 20.0, 0), (5, 5.1, 10.0, 0)]])
    [(ti, pi)] = match_catalogs(truth, pred, 0.5, mag_slack=0.5)
    assert ti.tolist() == [0, 1] and pi.tolist() == [1, 0]


def test_flux_ratio_quantiles_recover_known_values():
    from hpc_bliss.evaluate.fluxstats import (
        LOG_WIDTH,
        N_LOG_BINS,
        median_abs_error,
        ratio_bins,
        summary,
    )

    rng = np.random.default_rng(3)
    true = 10 ** rng.uniform(0, 2, 20000)
    log_ratio = rng.normal(0.1, 0.3, true.size)
    pred = true * np.exp(log_ratio)
    counts = np.bincount(ratio_bins(pred, true), minlength=N_LOG_BINS + 2)
    got = summary(counts)
    assert got["n"] == true.size
    for key, q in (("median", 50), ("p16", 16), ("p84", 84)):
        want = np.percentile(np.exp(log_ratio) - 1, q)
        assert abs(np.log1p(got[key]) - np.log1p(want)) <= LOG_WIDTH, key
    want = np.median(np.abs(np.exp(log_ratio) - 1))
    assert abs(median_abs_error(counts) - want) <= LOG_WIDTH * (1 + want)
    # predictions <= 0 and beyond the grid land in the end bins
    assert ratio_bins(np.array([0.0, -1.0, 1e-9, 1e9]), np.ones(4)).tolist() == [
        0,
        0,
        0,
        N_LOG_BINS + 1,
    ]


def test_flux_bias_table_by_magnitude_and_f1_by_magnitude():
    truth = _cat([[(5, 5, 10.0, 0), (15, 15, 10.0, 0), (25, 25, 100.0, 0)]])  # r 20, 20, 17.5
    pred = _cat([[(5, 5, 12.0, 0), (15, 15, 12.0, 0), (25, 25, 80.0, 0)]])
    m = _detect(truth, pred).metrics()
    table = m["flux_ratio"]
    i20, i17 = table["labels"].index("[20, 21)"), table["labels"].index("[17, 18)")
    assert table["n"][i20] == [2] * N_BANDS and table["n"][i17] == [1] * N_BANDS
    assert table["median"][i20][2] == pytest.approx(0.2, abs=0.012)
    assert table["median"][i17][2] == pytest.approx(-0.2, abs=0.012)
    assert table["all"][2]["n"] == 3 and table["bright_n"] == [1] * N_BANDS  # r < 20: one
    assert table["bright_median_abs_error"][2] == pytest.approx(0.2, abs=0.012)
    f1 = m["f1_by_mag"]
    assert f1["rates"][i17] == 1.0 and f1["rates"][i20] is None  # no prediction in [20, 21)
