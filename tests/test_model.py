"""Encoder, variational distributions, the two-source loss and the count accuracy."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.config import load_config
from hpc_bliss.evaluate.metrics import TileCounts
from hpc_bliss.model import Encoder, VariationalDist, double_detection_nll
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch
from hpc_bliss.simulate.prior import sample_prior

ROOT = Path(__file__).resolve().parents[1]
B = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def small_encoder(seed: int = 0, **kw) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(B, 2, hidden=kw.pop("hidden", 16), n_blocks=kw.pop("n_blocks", 1), **kw)


def empty(ht: int, wt: int, m: int, n: int = 1) -> dict[str, torch.Tensor]:
    return {
        "n_sources": torch.zeros(n, ht, wt, dtype=torch.long),
        "locs": torch.zeros(n, ht, wt, m, 2),
        "source_type": torch.zeros(n, ht, wt, m, 1, dtype=torch.long),
        "star_fluxes": torch.zeros(n, ht, wt, m, B),
        "galaxy_fluxes": torch.zeros(n, ht, wt, m, B),
        "galaxy_params": torch.zeros(n, ht, wt, m, 6),
    }


def put(d: dict, tile: tuple[int, int, int], slot: int, flux: float, galaxy: bool, loc=(0.3, 0.6)):
    d["n_sources"][tile] = max(int(d["n_sources"][tile]), slot + 1)
    d["locs"][tile][slot] = torch.tensor(loc)
    d["source_type"][tile][slot] = int(galaxy)
    d["galaxy_fluxes" if galaxy else "star_fluxes"][tile][slot] = flux * torch.linspace(0.5, 1.5, B)
    if galaxy:
        d["galaxy_params"][tile][slot] = torch.tensor([0.4, 1.0, 0.6, 1.2, 0.8, 0.5])


@pytest.fixture(scope="module")
def smoke_batch():
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    return simulate_batch(cfg, 4, make_generator(0, "t"), make_renderer(cfg, "cpu"))


def test_shapes_of_features_and_heads():
    enc = small_encoder()
    images = torch.randn(2, B, 40, 40)
    feats = enc(images)
    assert feats.shape == (2, 16, 20, 20)
    q = enc.marginal(feats)
    assert q.count_logits is not None and q.count_logits.shape == (2, 20, 20, 3)
    assert q.loc_mean.shape == q.loc_scale.shape == (2, 20, 20, 2)
    assert q.log_flux_mean.shape == (2, 20, 20, 2, B) and q.gal_mean.shape == (2, 20, 20, 6)
    cond = TileCatalog(2, empty(20, 20, 1, n=2))
    qc = enc.conditional(feats, cond)
    assert qc.count_logits is None and qc.tile_shape == (2, 20, 20)
    with pytest.raises(ValueError, match="does not divide"):
        enc(torch.randn(1, B, 41, 40))
    bg_enc = small_encoder(use_background=True)
    assert bg_enc(images, torch.rand(2, B)).shape == (2, 16, 20, 20)
    with pytest.raises(ValueError, match="background"):
        bg_enc(images)


@pytest.mark.parametrize("use_mode", [True, False])
def test_sample_returns_cropped_catalog_with_at_most_two_sources(use_mode):
    enc = small_encoder()
    with torch.no_grad():  # make some tiles predict 2 sources
        enc.marginal_head[-1].bias[:3] = torch.tensor([0.0, 0.0, 0.5])
    images = torch.randn(2, B, 40, 40).abs() * 3
    cat = enc.sample(images, use_mode=use_mode, generator=make_generator(1, "s"))
    assert isinstance(cat, TileCatalog) and cat.max_sources == 2
    assert cat["n_sources"].shape == (2, 18, 18) and int(cat["n_sources"].max()) <= 2
    assert set(cat.keys()) >= {"locs", "source_type", "star_fluxes", "galaxy_fluxes"}
    assert bool((cat["n_sources"] == 2).any())
    on = cat.is_on_mask
    assert bool((cat["locs"][~on] == 0).all()) and bool((cat.fluxes[on] > 0).all())
    assert bool(((cat["locs"] >= 0) & (cat["locs"] < 1)).all())
    gal = cat.galaxy_bools[..., 0]
    q = cat["galaxy_params"][..., [0, 2, 4]][gal]
    assert bool(((q > 0) & (q <= 1)).all())
    if not use_mode:
        again = enc.sample(images, use_mode=False, generator=make_generator(1, "s"))
        assert all(torch.equal(cat[k], again[k]) for k in cat.keys())


def test_nll_finite_for_edge_targets():
    d = empty(2, 3, 1)
    put(d, (0, 0, 0), 0, 1e-12, galaxy=False, loc=(0.0, 0.0))
    put(d, (0, 0, 1), 0, 0.0, galaxy=True, loc=(1.0, 1.0 - 1e-7))
    d["galaxy_params"][0, 0, 1, 0] = torch.tensor([0.0, 0.0, 1.0, 1e-9, 1.0, 0.0])
    put(d, (0, 0, 2), 0, 1e4, galaxy=True, loc=(0.5, 1.0))
    d["galaxy_params"][0, 0, 2, 0] = torch.tensor([1.0, math.pi, 1.0, 50.0, 1e-9, 1e3])
    target = TileCatalog(2, d)
    counts = torch.tensor([[[0, 1, 2], [2, 3, 1]]])
    n_params = VariationalDist.n_params(B)
    for scale in (0.0, 1.0, 30.0):
        params = torch.randn(1, 2, 3, n_params, generator=make_generator(2, "p")) * scale
        params.requires_grad_(True)
        nll = VariationalDist(params, B).nll(target, counts)
        assert nll.shape == (1, 2, 3) and bool(torch.isfinite(nll).all())
        nll.sum().backward()
        assert bool(torch.isfinite(params.grad).all())
    with pytest.raises(ValueError):
        VariationalDist(torch.zeros(1, 2, 3, n_params - 3), B, with_counts=True)


def test_truncated_normal_density_integrates_to_one():
    from hpc_bliss.model.variational import truncated_normal_nll

    x = torch.linspace(0, 1, 20001)
    for mean, scale in ((0.5, 0.1), (0.02, 0.5), (0.99, 3.0), (0.3, 0.002)):
        p = torch.exp(-truncated_normal_nll(x, torch.tensor(mean), torch.tensor(scale)))
        assert float(torch.trapezoid(p, x)) == pytest.approx(1.0, rel=2e-3)


@torch.no_grad()
def test_two_source_loss_is_logsumexp_of_both_orders():
    enc = small_encoder(3)
    feats = enc(torch.randn(1, B, 12, 12))
    d = empty(6, 6, 3)
    put(d, (0, 1, 1), 0, 3.0, galaxy=True, loc=(0.2, 0.7))  # second brightest, first slot
    put(d, (0, 1, 1), 1, 10.0, galaxy=False, loc=(0.8, 0.1))
    put(d, (0, 4, 4), 0, 2.0, galaxy=False)
    loss = double_detection_nll(enc, feats, TileCatalog(2, d))
    assert loss.shape == (1, 6, 6)

    z1, z2 = empty(6, 6, 1), empty(6, 6, 1)  # brightest / second brightest, by hand
    put(z1, (0, 1, 1), 0, 10.0, galaxy=False, loc=(0.8, 0.1))
    put(z1, (0, 4, 4), 0, 2.0, galaxy=False)
    put(z2, (0, 1, 1), 0, 3.0, galaxy=True, loc=(0.2, 0.7))
    z1, z2 = TileCatalog(2, z1), TileCatalog(2, z2)
    counts = torch.zeros(1, 6, 6, dtype=torch.long)
    counts[0, 1, 1], counts[0, 4, 4] = 2, 1
    marg = enc.marginal(feats)
    a = marg.nll(z1, counts) + enc.conditional(feats, z1).nll(z2)
    b = marg.nll(z2, counts) + enc.conditional(feats, z2).nll(z1)
    expect = -torch.logaddexp(-a[0, 1, 1], -b[0, 1, 1])
    assert float(loss[0, 1, 1]) == pytest.approx(float(expect), rel=1e-5)
    assert float(loss[0, 1, 1]) < min(float(a[0, 1, 1]), float(b[0, 1, 1]))
    assert float(loss[0, 4, 4]) == pytest.approx(float(marg.nll(z1, counts)[0, 4, 4]), rel=1e-5)
    count0 = -torch.log_softmax(marg.count_logits, -1)[0, 2, 3, 0]
    assert float(loss[0, 2, 3]) == pytest.approx(float(count0), rel=1e-5)

    # min_flux drops the 2 nmgy star and the 3 nmgy galaxy: the same as removing them by hand
    filtered = double_detection_nll(enc, feats, TileCatalog(2, d), min_flux=5.0)
    manual = empty(6, 6, 3)
    put(manual, (0, 1, 1), 0, 10.0, galaxy=False, loc=(0.8, 0.1))
    torch.testing.assert_close(filtered, double_detection_nll(enc, feats, TileCatalog(2, manual)))


def test_loss_is_invariant_to_slot_order():
    overrides = ["prior.mean_sources=1.5", "prior.prob_galaxy=0.5"]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    target = sample_prior(cfg.prior, 2, make_generator(4, "c"), torch.device("cpu"))
    assert int((target["n_sources"] >= 2).sum()) > 20
    enc = small_encoder(5)
    feats = enc(torch.randn(2, B, 40, 40))
    keys = torch.rand(target.is_on_mask.shape, generator=make_generator(4, "perm"))
    order = torch.where(target.is_on_mask, keys, 2.0).argsort(-1)  # shuffle active slots only
    shuffled = {}
    for k, v in target.data.items():
        idx = order[..., None].expand(*order.shape, v.shape[-1]) if v.dim() == 5 else None
        shuffled[k] = v if idx is None else v.gather(3, idx)
    assert not torch.equal(shuffled["locs"], target["locs"])
    loss = double_detection_nll(enc, feats, target)
    torch.testing.assert_close(loss, double_detection_nll(enc, feats, TileCatalog(2, shuffled)))


def test_overfits_a_fixed_batch(smoke_batch):
    target, rendered = smoke_batch
    enc = small_encoder(6, hidden=32, n_blocks=2)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = double_detection_nll(enc, enc(rendered.images), target).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])
    pred = enc.sample(rendered.images, rendered.background)
    acc = _counts(pred, target, 1)
    assert acc["total"] == 4 * 18 * 18 and acc["correct"] <= acc["within1"] <= acc["total"]


def _counts(pred: TileCatalog, truth: TileCatalog, border: int) -> dict[str, int]:
    counts = TileCounts(max_count=3)
    counts.update_catalogs(pred, truth, border)
    return {"correct": counts.correct, "within1": counts.within1, "total": counts.total}


def test_n_sources_accuracy_on_interior_tiles():
    truth_n = torch.tensor([[9, 9, 9, 9], [9, 1, 0, 9], [9, 3, 2, 9], [9, 9, 9, 9]])
    truth_n = truth_n.clamp(max=3)[None]  # border values never count
    truth = TileCatalog(2, {"n_sources": truth_n, "locs": torch.zeros(1, 4, 4, 3, 2)})
    pred_n = torch.tensor([[[1, 0], [2, 0]]])  # right, right, 3 vs 2 (off by 1), 2 vs 0 (by 2)
    pred = TileCatalog(2, {"n_sources": pred_n, "locs": torch.zeros(1, 2, 2, 2, 2)})
    assert _counts(pred, truth, 1) == {"correct": 2, "within1": 3, "total": 4}
    pred_n = torch.tensor([[[1, 0], [2, 2]]])
    pred = TileCatalog(2, {"n_sources": pred_n, "locs": torch.zeros(1, 2, 2, 2, 2)})
    counts = _counts(pred, truth, 1)
    assert counts["correct"] / counts["total"] == 0.75 and counts["within1"] == 4
    full = TileCatalog(
        2, {"n_sources": torch.zeros(1, 4, 4, dtype=torch.long), "locs": truth["locs"]}
    )
    full["n_sources"][0, 1:3, 1:3] = pred_n[0]
    assert _counts(full, truth, 1) == counts
    with pytest.raises(ValueError, match="pred tiles"):
        _counts(truth.symmetric_crop(1).symmetric_crop(0), truth, 0)


def test_model_code_has_no_distributed_imports():
    pattern = re.compile(
        r"^\s*(import|from)\s+(torch\.distributed|mpi4py|submitit|lightning|pytorch_lightning)\b",
        re.M,
    )
    for name in ("__init__.py", "encoder.py", "variational.py", "loss.py", "checkerboard.py"):
        text = (ROOT / "hpc_bliss" / "model" / name).read_text()
        assert not pattern.search(text), name
