"""Per-tile variational distributions q(z | x) over one source, read from a head's raw output.

A head emits ``P`` numbers per tile, ``(N, Ht, Wt, P)``, laid out as (B bands)::

    [count logits 3]  loc means 2, loc scales 2 | galaxy logit 1 |
    star log-flux mean B, scale B | galaxy log-flux mean B, scale B | galaxy params mean 6, scale 6

The count logits (a categorical over {0, 1, 2}: the tile's total source count clipped at 2) are
present only in the marginal head. Factors, all independent given the tile's features:

* ``locs`` (row, col): normal truncated to [0, 1] per coordinate, mean ``sigmoid(raw)``;
* ``source_type``: Bernoulli, probability of a galaxy ``sigmoid(raw)``;
* fluxes (nmgy, per band): log-normal, one set for stars and one for galaxies, scored with the
  target's own type;
* galaxy params: disk_frac, disk_q, bulge_q logit-normal on (0, 1), beta_radians logit-normal on
  (0, π), a_d and a_b (arcsec) log-normal; scored only for galaxies.

Every scale is ``softplus(raw) + MIN_SCALE``. Negative log-densities include the Jacobians of the
transforms, so :meth:`VariationalDist.nll` is a density in the catalog's own units (nmgy, arcsec,
radians, tile fractions). Targets are clamped into the support (``UNIT_EPS``, ``POSITIVE_MIN``)
so that edge values (locs 0, q = 1, a flux of 0) give finite values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.special import log_ndtr, ndtr, ndtri

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.io.schema import GALAXY_PARAMS, N_GALAXY_PARAMS

MAX_COUNT = 2  #: the count distribution is over {0, 1, 2}
MIN_SCALE = 1e-3  #: lower bound of every normal scale (transformed units)
UNIT_EPS = 1e-5  #: (0, 1) targets are clamped to [UNIT_EPS, 1 - UNIT_EPS]
POSITIVE_MIN = 1e-4  #: log-normal targets (nmgy, arcsec) are clamped to >= this
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: upper end of each galaxy param's interval (all start at 0); 0 marks a log-normal (positive)
#: param: (1, π, 1, 0, 1, 0) for disk_frac, beta_radians, disk_q, a_d, bulge_q, a_b
_GAL_UPPER = tuple(p.upper if p.bounded else 0.0 for p in GALAXY_PARAMS)

Point = dict[str, Tensor]


def _scale(raw: Tensor) -> Tensor:
    return F.softplus(raw) + MIN_SCALE


def _normal_nll(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    return 0.5 * ((y - mean) / scale) ** 2 + torch.log(scale) + _HALF_LOG_2PI


def _log_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) - Φ(a)) for a < b, computed on the side of 0 where it does not cancel."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-7))


def truncated_normal_nll(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """-log density at ``x`` of N(mean, scale²) truncated to [0, 1] (x is clamped into it)."""
    x = x.clamp(0.0, 1.0)
    log_z = _log_mass(-mean / scale, (1.0 - mean) / scale)
    return _normal_nll(x, mean, scale) + log_z


def _galaxy_to_unconstrained(x: Tensor) -> tuple[Tensor, Tensor]:
    """Galaxy params (..., 6) -> (y, log|dy/dx|): logit(x / upper) or log(x)."""
    upper = x.new_tensor(_GAL_UPPER)
    bounded = upper > 0
    u = (x / torch.where(bounded, upper, 1.0)).clamp(UNIT_EPS, 1 - UNIT_EPS)
    log_pos = torch.log(x.clamp_min(POSITIVE_MIN))
    y = torch.where(bounded, torch.logit(u), log_pos)
    log_upper = torch.log(torch.where(bounded, upper, 1.0))
    logjac = torch.where(bounded, -(torch.log(u) + torch.log1p(-u) + log_upper), -log_pos)
    return y, logjac


def _galaxy_from_unconstrained(y: Tensor) -> Tensor:
    upper = y.new_tensor(_GAL_UPPER)
    bounded = upper > 0
    unit = torch.sigmoid(y).clamp(UNIT_EPS, 1.0)  # q = 1 is allowed, 0 is not
    return torch.where(bounded, unit * torch.where(bounded, upper, 1.0), torch.exp(y))


class VariationalDist:
    """q over one source per tile (plus the tile's count, for the marginal head).

    ``params``: raw head output (N, Ht, Wt, P) with P = :meth:`n_params`; computed in float32.
    """

    def __init__(self, params: Tensor, n_bands: int, with_counts: bool = True) -> None:
        want = self.n_params(n_bands, with_counts)
        if params.shape[-1] != want or params.dim() != 4:
            raise ValueError(f"params must be (N, Ht, Wt, {want}), got {tuple(params.shape)}")
        p = params.float()
        self.params = p  #: the raw head output (N, Ht, Wt, P), float32
        self.n_bands, self.with_counts = n_bands, with_counts
        self.count_logits: Tensor | None = None
        if with_counts:
            self.count_logits, p = p[..., : MAX_COUNT + 1], p[..., MAX_COUNT + 1 :]
        b = n_bands
        sizes = [2, 2, 1, 2 * b, 2 * b, 2 * N_GALAXY_PARAMS]
        loc_mean, loc_scale, gal_logit, star_flux, gal_flux, gal = p.split(sizes, dim=-1)
        self.loc_mean, self.loc_scale = torch.sigmoid(loc_mean), _scale(loc_scale)
        self.galaxy_logit = gal_logit[..., 0]
        flux = torch.stack([star_flux, gal_flux], dim=-2)  # (..., 2 types, 2B)
        self.log_flux_mean, self.log_flux_scale = flux[..., :b], _scale(flux[..., b:])
        n_gal = N_GALAXY_PARAMS
        self.gal_mean, self.gal_scale = gal[..., :n_gal], _scale(gal[..., n_gal:])

    @staticmethod
    def flux_mean_channels(n_bands: int, with_counts: bool = True) -> tuple[slice, slice]:
        """The raw channels of the star and the galaxy log-flux means (B each)."""
        start = (MAX_COUNT + 1 if with_counts else 0) + 5
        b = n_bands
        return slice(start, start + b), slice(start + 2 * b, start + 3 * b)

    @staticmethod
    def n_params(n_bands: int, with_counts: bool = True) -> int:
        """P, the number of raw values per tile a head must emit."""
        return (MAX_COUNT + 1 if with_counts else 0) + 5 + 4 * n_bands + 2 * N_GALAXY_PARAMS

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        """(N, Ht, Wt)."""
        return tuple(self.loc_mean.shape[:3])  # type: ignore[return-value]

    @property
    def galaxy_prob(self) -> Tensor:
        """(N, Ht, Wt) probability that the source is a galaxy."""
        return torch.sigmoid(self.galaxy_logit)

    def count_nll(self, count_target: Tensor) -> Tensor:
        """-log q(count) (N, Ht, Wt) of the true count, clipped at 2 here."""
        if self.count_logits is None:
            raise ValueError("this distribution has no count factor (conditional head)")
        idx = count_target.long().clamp(0, MAX_COUNT).unsqueeze(-1)
        return -torch.log_softmax(self.count_logits, dim=-1).gather(-1, idx)[..., 0]

    def nll(self, target: TileCatalog, count_target: Tensor | None = None) -> Tensor:
        """-log q (N, Ht, Wt) of the target's first slot, zero where that slot is empty.

        Scores locs, type, the fluxes of the target's type and, for galaxies, galaxy params;
        adds the count term -log q(count_target) when ``count_target`` (N, Ht, Wt) is given.
        """
        if tuple(target["n_sources"].shape) != self.tile_shape:
            raise ValueError(
                f"target tiles {tuple(target['n_sources'].shape)} != params {self.tile_shape}"
            )
        on = target.is_on_mask[..., 0]
        is_gal = target.galaxy_bools[..., 0, 0]
        locs = target["locs"][..., 0, :].float()
        loc = truncated_normal_nll(locs, self.loc_mean, self.loc_scale).sum(-1)
        kind = F.binary_cross_entropy_with_logits(
            self.galaxy_logit, is_gal.float(), reduction="none"
        )
        log_flux = torch.log(target.fluxes[..., 0, :].float().clamp_min(POSITIVE_MIN))
        g = is_gal[..., None]  # the flux factor of the target's own type
        mean = torch.where(g, self.log_flux_mean[..., 1, :], self.log_flux_mean[..., 0, :])
        scale = torch.where(g, self.log_flux_scale[..., 1, :], self.log_flux_scale[..., 0, :])
        flux = (_normal_nll(log_flux, mean, scale) + log_flux).sum(-1)  # + log-normal Jacobian
        total = loc + kind + flux
        if "galaxy_params" in target:
            y, logjac = _galaxy_to_unconstrained(target["galaxy_params"][..., 0, :].float())
            gal = (_normal_nll(y, self.gal_mean, self.gal_scale) - logjac).sum(-1)
            total = total + torch.where(is_gal, gal, 0.0)
        elif bool((on & is_gal).any()):
            raise ValueError("target has galaxies but no 'galaxy_params'")
        out = torch.where(on, total, 0.0)
        if count_target is not None:
            out = out + self.count_nll(count_target)
        return out

    def _point(self, locs: Tensor, is_gal: Tensor, log_flux: Tensor, gal_y: Tensor) -> Point:
        """Per-tile single-source tensors; the other type's fluxes and a star's params are 0."""
        flux = torch.exp(log_flux)  # (..., 2, B)
        g = is_gal[..., None]
        return {
            "locs": locs.clamp(0.0, 1.0 - torch.finfo(locs.dtype).eps),
            "source_type": is_gal.long()[..., None],
            "star_fluxes": torch.where(g, 0.0, flux[..., 0, :]),
            "galaxy_fluxes": torch.where(g, flux[..., 1, :], 0.0),
            "galaxy_params": torch.where(g, _galaxy_from_unconstrained(gal_y), 0.0),
        }

    def mode(self) -> Point:
        """Point estimate per tile: the mode of the count, type and (truncated) locs; the median
        of log-/logit-normal variables (the mode of their normal, mapped back).

        Keys: ``n_sources`` (N, Ht, Wt) int64 if the head has counts, ``locs`` (N, Ht, Wt, 2),
        ``source_type`` (.., 1) int64, ``star_fluxes``/``galaxy_fluxes`` (.., B) nmgy,
        ``galaxy_params`` (.., 6).
        """
        point = self._point(self.loc_mean, self.galaxy_logit > 0, self.log_flux_mean, self.gal_mean)
        if self.count_logits is not None:
            point["n_sources"] = self.count_logits.argmax(-1)
        return point

    def sample(self, generator: torch.Generator | None = None) -> Point:
        """One draw per tile from q (same keys as :meth:`mode`)."""
        g = generator

        def rand(like: Tensor) -> Tensor:
            return torch.rand(like.shape, generator=g, device=like.device)

        def randn(like: Tensor) -> Tensor:
            return torch.randn(like.shape, generator=g, device=like.device)

        mu, sd = self.loc_mean, self.loc_scale
        lo, hi = ndtr(-mu / sd), ndtr((1.0 - mu) / sd)
        u = (lo + rand(mu) * (hi - lo)).clamp(1e-7, 1 - 1e-7)
        locs = (mu + sd * ndtri(u)).clamp(0.0, 1.0)
        is_gal = rand(self.galaxy_logit) < self.galaxy_prob
        log_flux = self.log_flux_mean + self.log_flux_scale * randn(self.log_flux_mean)
        gal_y = self.gal_mean + self.gal_scale * randn(self.gal_mean)
        point = self._point(locs, is_gal, log_flux, gal_y)
        if self.count_logits is not None:
            gumbel = -torch.log(-torch.log(rand(self.count_logits).clamp(1e-12, 1 - 1e-7)))
            point["n_sources"] = (self.count_logits + gumbel).argmax(-1)
        return point
