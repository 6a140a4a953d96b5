"""The Gaussian-mixture galaxy profiles against GalSim's exact Exponential and DeVaucouleurs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from hpc_bliss.simulate.profiles import (
    DEV_VARIANCES,
    DEV_WEIGHTS,
    EXP_VARIANCES,
    EXP_WEIGHTS,
    mixture,
)

CONSTANTS = {"exp": (EXP_WEIGHTS, EXP_VARIANCES), "dev": (DEV_WEIGHTS, DEV_VARIANCES)}
PSF_SIGMA = 1.25  # pixels
MAX_REL_PIXEL_ERROR = 5e-3  # max |galsim - mixture| / peak of the galsim image
MAX_REL_FLUX_ERROR = 1e-3  # |Δ stamp flux| / stamp flux


@pytest.mark.parametrize("profile", ["exp", "dev"])
def test_weights_sum_to_one_and_variances_positive(profile):
    weights, variances = CONSTANTS[profile]
    assert len(weights) == len(variances) >= 6
    assert all(isinstance(x, float) for x in weights + variances)
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-12)
    assert all(w >= 0 for w in weights)
    assert all(v > 0 and math.isfinite(v) for v in variances)
    assert list(variances) == sorted(variances)


@pytest.mark.parametrize("profile", ["exp", "dev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_tensors(profile, dtype):
    w, v = mixture(profile, device="cpu", dtype=dtype)
    weights, variances = CONSTANTS[profile]
    assert w.dtype == v.dtype == dtype
    assert w.device.type == v.device.type == "cpu"
    assert w.shape == v.shape == (len(weights),)
    torch.testing.assert_close(w, torch.tensor(weights, dtype=dtype))
    torch.testing.assert_close(v, torch.tensor(variances, dtype=dtype))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", ["sersic", "Exp", "", None])
def test_unknown_profile(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        mixture(bad)


def _images(profile: str, hlr: float, size: int, q: float | None):
    import galsim

    weights, variances = mixture(profile, dtype=torch.float64)
    cls = galsim.Exponential if profile == "exp" else galsim.DeVaucouleurs
    truth = galsim.Convolve(cls(half_light_radius=hlr), galsim.Gaussian(sigma=PSF_SIGMA))
    approx = galsim.Sum(
        [
            galsim.Gaussian(sigma=math.sqrt(v * hlr**2 + PSF_SIGMA**2), flux=w)
            for w, v in zip(weights.tolist(), variances.tolist(), strict=True)
        ]
    )
    if q is not None:
        truth = truth.shear(q=q, beta=0.6 * galsim.radians)
        approx = approx.shear(q=q, beta=0.6 * galsim.radians)
    a = truth.drawImage(nx=size, ny=size, scale=1, method="auto").array.astype(np.float64)
    b = approx.drawImage(nx=size, ny=size, scale=1, method="auto").array.astype(np.float64)
    return a, b


@pytest.mark.parametrize("profile", ["exp", "dev"])
@pytest.mark.parametrize(
    ("hlr", "q"), [(0.3, None), (0.7, None), (1.5, None), (3.0, None), (8.0, None), (1.5, 0.3)]
)
def test_matches_galsim_after_psf(profile, hlr, q):
    """A 64×64 stamp at pixel scale 1 (the de Vaucouleurs profile with hlr = 8 px has 13% of its
    light outside it, which the mixture must reproduce too)."""
    truth, approx = _images(profile, hlr, 64, q)
    peak = truth.max()
    rel = np.abs(truth - approx).max() / peak
    assert rel <= MAX_REL_PIXEL_ERROR, f"{profile} hlr={hlr} q={q}: max|Δ|/peak = {rel:.2e}"
    dflux = abs(approx.sum() - truth.sum()) / truth.sum()
    assert dflux <= MAX_REL_FLUX_ERROR, f"{profile} hlr={hlr} q={q}: Δflux/flux = {dflux:.2e}"


@pytest.mark.parametrize("profile", ["exp", "dev"])
def test_fourier_transform_matches_galsim(profile):
    """The renderer's form Σ w exp(-2π² v hlr² |k|²), k in cycles per unit length, against
    GalSim's kValue (k in radians per unit length) for |k|·hlr ≤ 5 cycles."""
    import galsim

    hlr = 2.5
    cls = galsim.Exponential if profile == "exp" else galsim.DeVaucouleurs
    exact = cls(half_light_radius=hlr)
    w, v = mixture(profile, dtype=torch.float64)
    k = torch.linspace(0.0, 5.0 / hlr, 300, dtype=torch.float64)  # cycles per unit length
    approx = (w * torch.exp(-2 * math.pi**2 * v * hlr**2 * k[:, None] ** 2)).sum(-1)
    truth = [exact.kValue(galsim.PositionD(2 * math.pi * kk, 0.0)).real for kk in k.tolist()]
    err = (approx - torch.tensor(truth, dtype=torch.float64)).abs().max().item()
    assert err <= 2e-4, f"{profile}: max |ΔF(k)| = {err:.2e}"
