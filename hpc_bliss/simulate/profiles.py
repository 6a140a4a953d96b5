"""Gaussian-mixture approximations of the exponential and de Vaucouleurs galaxy profiles.

A profile of half-light radius ``hlr`` is approximated by a mixture of round Gaussians,

    I(x) ≈ Σ_j w_j N(x; 0, v_j · hlr² · I₂),      w_j ≥ 0,  Σ_j w_j = 1,  v_j > 0,

so its Fourier transform at wavenumber k (cycles per unit length) is
Σ_j w_j exp(-2π² v_j hlr² |k|²).  After a shear by the matrix A, component j has covariance
v_j hlr² · A Aᵀ.  The weights are fractions of the total flux (the mixture has unit flux
exactly); the variances are dimensionless, in units of hlr², so multiply them by hlr² in
whatever length unit (pixels, arcsec) hlr is given in.

The targets are GalSim's untruncated ``Exponential`` (Sersic n = 1) and ``DeVaucouleurs``
(Sersic n = 4) with the same ``half_light_radius``.  The coefficients were fitted by
``scripts/fit_profile_mixtures.py`` (rerun it to regenerate or change K; it prints these
literals and the full accuracy table): after convolution with a round Gaussian PSF of
standard deviation σ, the largest difference from the exact profile relative to its peak is
minimised (minimax, via variable-projection least squares then SLSQP) over
σ/hlr ∈ [0.05, 8] (the PSF core of σ ≈ 1.2-1.5 px with hlr from ~0.15 to ~25 px), jointly
with the enclosed flux within radius R ∈ [0.05, 100] hlr.  Achieved (exact PSF-convolved
profile by quadrature; σ/hlr = 0.0625, 0.156 are hlr = 20, 8 px at σ = 1.25 px):

* exp, K = 7: max |Δ|/peak ≤ 2.3e-4 for σ/hlr ≥ 0.0625 (3.1e-4 at 0.05; ≤ 4.2e-5 for
  σ/hlr ≥ 0.156); enclosed-flux error ≤ 3.0e-5.
* dev, K = 12: max |Δ|/peak ≤ 2.7e-4 for σ/hlr ≥ 0.0625 (6.2e-4 at 0.05; ≤ 3.0e-5 for
  σ/hlr ≥ 0.156); enclosed-flux error ≤ 6.2e-5.

Drawn with GalSim (Gaussian PSF σ = 1.25 px, pixel scale 1, hlr 0.3-8 px, also sheared to
q = 0.3) the worst pixel difference is 4.1e-5 (exp) and 3.2e-5 (dev) of the peak
(``tests/test_profiles.py`` checks ≤ 5e-3 and the stamp flux to 1e-3).  Components are sorted
by increasing variance.  This module needs only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Exponential (Sersic n=1): flux fractions, summing to 1.
EXP_WEIGHTS: tuple[float, ...] = (
    0.00105174425986,
    0.0104886033288,
    0.0565393111445,
    0.189036484147,
    0.36743197946233996,
    0.313288769169,
    0.0621631084885,
)

#: Exponential: variances of the components, in units of hlr².
EXP_VARIANCES: tuple[float, ...] = (
    0.00381988136814,
    0.0242651483274,
    0.0932549781954,
    0.27908837158,
    0.714798605737,
    1.65300781318,
    3.63296720753,
)

#: de Vaucouleurs (Sersic n=4): flux fractions, summing to 1.
DEV_WEIGHTS: tuple[float, ...] = (
    0.00995256157051,
    0.0220702802396,
    0.0468457264278,
    0.0828216852715,
    0.124434750934,
    0.159921314829,
    0.17570667361981002,
    0.161940018406,
    0.120671293523,
    0.0675142564025,
    0.0243531544675,
    0.00376828430878,
)

#: de Vaucouleurs: variances of the components, in units of hlr².
DEV_VARIANCES: tuple[float, ...] = (
    0.00028695936679,
    0.00198004959951,
    0.00854130509432,
    0.0318557321563,
    0.108583113535,
    0.349422720279,
    1.09034790259,
    3.38345500686,
    10.7322419144,
    36.1579582242,
    137.899276189,
    706.842039588,
)


_MIXTURES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "exp": (EXP_WEIGHTS, EXP_VARIANCES),
    "dev": (DEV_WEIGHTS, DEV_VARIANCES),
}


def mixture(
    profile: str, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """(weights, variances) of the ``"exp"`` or ``"dev"`` mixture as 1-D tensors of length K.

    ``weights`` sum to 1 (flux fractions); ``variances`` are in units of hlr² (multiply by the
    squared half-light radius).  Raises ValueError for any other profile name.
    """
    try:
        weights, variances = _MIXTURES[profile]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown galaxy profile {profile!r}: expected one of {sorted(_MIXTURES)}"
        ) from None
    return (
        torch.tensor(weights, device=device, dtype=dtype),
        torch.tensor(variances, device=device, dtype=dtype),
    )
