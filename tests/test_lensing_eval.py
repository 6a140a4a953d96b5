"""Lensing evaluation: the ellipticity convention against the renderer's, the oracle on a field
without shape noise, the moments baseline, the fit and coverage on synthetic predictions with
known m and c, exact merging, augmentation of the head's targets, and 2 MPI ranks = 1."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import load_config
from hpc_bliss.evaluate.lensing import METHODS, LensingCounts
from hpc_bliss.evaluate.shapes import (
    _lensed,
    catalog_ellipticities,
    ellipticity,
    moment_ellipticities,
    oracle_cell_sums,
    psf_covariance,
)
from hpc_bliss.model.lensing import lensing_target
from hpc_bliss.simulate.prior import sample_prior
from hpc_bliss.simulate.render import Renderer, _rotation, _shear_matrix
from hpc_bliss.stages.evaluate import evaluate
from hpc_bliss.stages.generate import generate
from hpc_bliss.stages.train import train
from hpc_bliss.train.augment import _flip, _rot90
from tests.conftest import CONFIGS, ROOT
from tests.mpi_utils import MPI_ENV, mpirun


def test_ellipticity_of_a_lensed_shape_is_the_renderers():
    """ε = (ε_s + g) / (1 + g* ε_s) equals the ellipticity of the covariance the renderer draws,
    S(g) R(β) diag(1/q, q) R(β)ᵀ S(g)ᵀ in (x, y) = (column, row)."""
    g = torch.Generator().manual_seed(0)
    q = 0.2 + 0.8 * torch.rand(200, generator=g, dtype=torch.float64)
    beta = math.pi * torch.rand(200, generator=g, dtype=torch.float64)
    shear = 0.2 * (torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5)
    rot, lens = _rotation(beta), _shear_matrix(shear)
    cov = lens @ rot @ torch.diag_embed(torch.stack([1 / q, q], -1)) @ rot.mT @ lens.mT
    expected = ellipticity(cov.numpy())
    got = _lensed(q, beta, torch.complex(shear[:, 0], shear[:, 1]))
    np.testing.assert_allclose(np.stack([got.real, got.imag], -1), expected, atol=1e-12)


def _field(overrides: list[str], n: int = 4, seed: int = 0):
    cfg = load_config(CONFIGS / "galaxies.yaml", overrides)
    return cfg, sample_prior(cfg.prior, n, torch.Generator().manual_seed(seed))


def test_oracle_recovers_a_constant_shear_without_shape_noise():
    """With round galaxies every lensed ellipticity is g = γ / (1 − κ) exactly, so each cell's
    mean is g to rounding (1e-12): the oracle's only difference from γ is γκ / (1 − κ)."""
    constant = ["prior.lensing.power_amplitude=0", "prior.galaxy_q_min=1.0", "prior.prob_galaxy=1"]
    _, cat = _field(constant)
    sums, counts = oracle_cell_sums(cat, 4)
    full = counts > 0
    assert full.sum() > 50  # of 4 images × 25 cells
    shear, kappa = cat["shear"][:, 0, 0].double(), cat["convergence"][:, 0, 0].double()
    g = (shear / (1 - kappa))[:, None, None].expand_as(sums)
    torch.testing.assert_close((sums / counts[..., None])[full], g[full], atol=1e-12, rtol=0)


def test_moments_measure_shear_of_round_galaxies_with_the_renderers_axes():
    """Isolated, noise-free round galaxies lensed by g: the moments baseline measures ε ≈ g
    diluted by its Gaussian-profile corrections (exponential and de Vaucouleurs wings), i.e.
    (1 + m) g with m ≈ −0.28 (measured); the test asks −0.4 < m < −0.1 per component, which a
    swapped axis or a sign error (m ≈ −2 or 0 · g) fails."""
    cfg, pool = _field(["prior.galaxy_q_min=1.0", "prior.prob_galaxy=1"], n=8)
    pool = pool.to_full_catalog()
    params = pool["galaxy_params"][pool.is_on_mask][:64]
    params[:, 3] = 0.5 + torch.rand(64, generator=torch.Generator().manual_seed(1))
    params[:, 5] = params[:, 3] / 2
    g = torch.tensor([0.05, -0.03])
    one = {"n_sources": torch.ones(64, dtype=torch.long), "plocs": torch.full((64, 1, 2), 24.3)}
    cat = FullCatalog(
        48,
        48,
        {
            **one,
            "source_type": torch.ones(64, 1, 1, dtype=torch.long),
            "galaxy_fluxes": torch.full((64, 1, 5), 30.0),
            "star_fluxes": torch.zeros(64, 1, 5),
            "galaxy_params": params[:, None],
            "shear": g.expand(64, 1, 2).contiguous(),
            "convergence": torch.zeros(64, 1, 1),
        },
    )
    images = Renderer(cfg.render, 48, 48).noiseless(cat)[:, 2].double().numpy()
    psf = psf_covariance(cfg.render)
    eps = [moment_ellipticities(im, np.array([[24.3, 24.3]]), psf) for im in images]
    assert all(ok[0] for _, ok in eps)
    m = np.mean([e[0] for e, _ in eps], axis=0) / g.numpy() - 1
    assert ((m > -0.4) & (m < -0.1)).all(), m


def _synthetic(m: float, c: float, noise: float, seed: int, n: int = 64):
    """Truths of 4×4 cells per image (a per-image constant plus a field) and predictions
    (1 + m) t + c + errors shared by an image's cells and errors of each cell."""
    g = torch.Generator().manual_seed(seed)
    t = 0.03 * torch.randn(n, 1, 1, 3, generator=g) + 0.01 * torch.randn(n, 4, 4, 3, generator=g)
    errors = torch.randn(n, 1, 1, 3, generator=g) + torch.randn(n, 4, 4, 3, generator=g)
    return t, (1 + m) * t + c + noise * errors


def _counts(t, p, scale):
    counts = LensingCounts(4)
    preds = {k: p[..., :2] for k in METHODS[2:]} | {"zero": torch.zeros_like(t)}
    counts.update(t, preds, p, scale)
    return counts


def test_fit_recovers_known_multiplicative_and_additive_bias():
    t, p = _synthetic(m=0.1, c=0.002, noise=0.0, seed=0)
    fit = _counts(t, p, torch.ones_like(t)).metrics()["encoder"]
    for comp in ("gamma1", "gamma2", "kappa"):  # no noise: exact up to the 2⁻³² rounding
        assert abs(fit[comp]["m"] - 0.1) < 1e-6 and abs(fit[comp]["c"] - 0.002) < 1e-8
        assert fit[comp]["mse_rescaled"] < 1e-12  # exactly linear in the truth: all known
    # with noise, m and c within 3 standard errors, and the errors those of the spread of m
    ms = []
    for seed in range(30):
        t, p = _synthetic(m=-0.05, c=0.001, noise=0.007, seed=seed)
        fit = _counts(t, p, torch.ones_like(t)).metrics()["encoder"]["gamma1"]
        assert abs(fit["m"] + 0.05) < 3 * fit["m_se"] and abs(fit["c"] - 0.001) < 3 * fit["c_se"]
        ms.append((fit["m"], fit["m_se"]))
    spread, mean_se = np.std([m for m, _ in ms]), np.mean([se for _, se in ms])
    assert 0.7 < mean_se / spread < 1.4, (mean_se, spread)


def test_mse_and_coverage_on_synthetic_predictions():
    t, p = _synthetic(m=0.0, c=0.0, noise=0.01, seed=1, n=256)
    sigma = 0.01 * math.sqrt(2)  # the predictions' error: two unit normals times 0.01
    lens = _counts(t, p, torch.full_like(t, sigma)).metrics()
    expected = ((p - t) ** 2).double().mean((0, 1, 2))
    for k, comp in enumerate(("gamma1", "gamma2", "kappa")):
        assert math.isclose(lens["encoder"][comp]["mse"], float(expected[k]), rel_tol=1e-6)
        assert abs(lens["coverage"]["68"][comp] - 0.6827) < 0.05
        assert abs(lens["coverage"]["95"][comp] - 0.9545) < 0.03
    zero = (t[..., :2] ** 2).double().mean()
    assert math.isclose(lens["zero"]["shear_mse"], float(zero), rel_tol=1e-6)
    assert lens["zero"]["gamma1"]["m"] == -1.0
    var = t[..., 0].double().var(unbiased=False)  # zero knows nothing: rescaled, var(t)
    assert math.isclose(lens["zero"]["gamma1"]["mse_rescaled"], float(var), rel_tol=1e-6)


def test_counts_add_exactly():
    t, p = _synthetic(m=0.02, c=0.0, noise=0.01, seed=2)
    scale = torch.full_like(t, 0.01)
    whole = _counts(t, p, scale)
    parts = _counts(t[:23], p[:23], scale[:23]) + _counts(t[23:], p[23:], scale[23:])
    assert parts.to_dict() == whole.to_dict()
    assert parts.metrics() == whole.metrics()


#: each symmetry: how augment moves an item, how it moves a map (H, W, k), and how it changes
#: a spin-2 pair (γ1, γ2): a flip of the columns negates γ2, a 90° rotation negates both
SYMMETRIES = {
    "flip": (_flip, lambda x: x.flip(1), torch.tensor([1.0, -1.0])),
    "rot90": (_rot90, lambda x: torch.rot90(x, 1, (0, 1)), torch.tensor([-1.0, -1.0])),
}


def _moved_map(names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
    """What the symmetries ``names`` (applied in order) do to a map whose channels 0 and 1 are
    a spin-2 pair."""
    for name in names:
        _, move, sign = SYMMETRIES[name]
        x = move(x).clone()
        x[..., :2] = x[..., :2] * sign.to(x.dtype)
    return x


@pytest.mark.parametrize("names", [("flip",), ("rot90",), ("flip", "rot90")])
def test_augmentation_transforms_the_heads_targets_as_spin_2(names):
    """The cell truths of an augmented item are the truths moved with the image, γ transformed
    as spin 2 and κ as a scalar; and the galaxies' lensed ellipticities (what the renderer
    draws from their angles and the shear) transform the same way, so the augmented galaxy
    angles and shear stay consistent with each other."""
    _, cat = _field(["prior.lensing.power_amplitude=1e-3"], n=1)
    moved = {
        "images": torch.zeros(5, 80, 80),
        "tile_catalog": {k: v[0] for k, v in cat.data.items()},
    }
    for name in names:
        moved = SYMMETRIES[name][0](moved)
    after = type(cat)(4, {k: v[None] for k, v in moved["tile_catalog"].items()})
    torch.testing.assert_close(
        lensing_target(after, 4)[0], _moved_map(names, lensing_target(cat, 4)[0])
    )
    eps_before = catalog_ellipticities(cat)[0][0].sum(2)  # (Ht, Wt, 2): sums over the slots
    eps_after = catalog_ellipticities(after)[0][0].sum(2)
    torch.testing.assert_close(eps_after, _moved_map(names, eps_before), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def trained_lensing(tmp_path_factory):
    """Smoke data and an encoder with a lensing head of 5×5-tile cells (20×20 tiles: 4×4
    cells, 2×2 of them interior), trained for one epoch."""
    root = tmp_path_factory.mktemp("lensing-eval")
    data, out = root / "data", root / "train"
    overrides = [
        f"generate.output_dir={data}",
        "generate.n_shards=8",
        "generate.split=[0.5,0.25,0.25]",
        "prior.prob_galaxy=0.6",
        f"train.output_dir={out}",
        "train.max_epochs=1",
        "train.num_workers=0",
        "model.lensing.enabled=true",
        "model.lensing.tiles_per_cell=5",
    ]
    cfg = load_config(CONFIGS / "smoke.yaml", overrides)
    assert generate(cfg, log=lambda s: None) == 0
    result = train(cfg)
    return root, [*overrides, f"evaluate.checkpoint={result['best']}"]


@pytest.mark.mpi
def test_lensing_report_with_two_processes_equals_one(trained_lensing):
    """Sums merge exactly; so that the encoder's outputs are equal too, the one process runs
    with one torch thread, as each of the 2 ranks does (Open MPI binds each to a core; on 2
    cores each has a one-core share anyway): thread counts change how convolutions round."""
    root, overrides = trained_lensing
    cfg = load_config(CONFIGS / "smoke.yaml", [*overrides, f"evaluate.output_dir={root / 'r1'}"])
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # evaluate gives a process its cores' share
    try:
        one = evaluate(cfg, log=lambda s: None)
    finally:
        os.sched_setaffinity(0, cores)
    assert one is not None and (root / "r1" / "lensing_map.png").stat().st_size > 0
    lens = one["lensing"]
    assert lens["n_cells"] == 2 * 8 * 2 * 2  # 2 test shards of 8 images, 2×2 interior cells
    assert "## Weak lensing" in (root / "r1" / "report.md").read_text()
    cmd = [
        *mpirun(2),
        sys.executable,
        "-m",
        "hpc_bliss",
        "evaluate",
        str(CONFIGS / "smoke.yaml"),
        *overrides,
        f"evaluate.output_dir={root / 'r2'}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    two = json.loads((root / "r2" / "report.json").read_text())
    assert two["processes"] == 2
    assert two["lensing"] == json.loads(json.dumps(lens))
