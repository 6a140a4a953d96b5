"""The encoder's posterior on a batch of crops: the mode as a tile catalog (the catalog of
:meth:`Encoder.sample_features`), with what the catalog file adds per source:

* ``exist_prob``: q(the tile holds ≥ 1 source) for the first source, q(≥ 2) for the second;
* ``galaxy_prob``: q(galaxy) of the source (its head: marginal for the first, conditional on
  the first for the second; with the checkerboard tiling, those of the tile's colour's pass);
* ``flux_err``: the standard deviation, nmgy, of q's log-normal flux per band (of the reported
  type), and ``log_flux_sd`` its σ (≈ the relative error; 1.0857 σ in magnitudes).

Optionally posterior samples (:meth:`Encoder.sample_features` with ``use_mode=False``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.model import Encoder
from hpc_bliss.model.variational import VariationalDist


def _per_source(first: Tensor, second: Tensor) -> Tensor:
    """(N, Ht, Wt, k) tensors of the two sources → (N, Ht, Wt, 2, k)."""
    return torch.stack([first, second], dim=3)


def _flux_spread(q: VariationalDist, is_gal: Tensor) -> tuple[Tensor, Tensor]:
    """σ of log flux (N, Ht, Wt, B) of the reported type, and the log-normal's sd in nmgy."""
    g = is_gal.bool()[..., None]
    mu = torch.where(g, q.log_flux_mean[..., 1, :], q.log_flux_mean[..., 0, :])
    sd = torch.where(g, q.log_flux_scale[..., 1, :], q.log_flux_scale[..., 0, :])
    var = torch.expm1(sd**2) * torch.exp(2 * mu + sd**2)
    return sd, var.sqrt()


@torch.no_grad()
def posterior_mode(encoder: Encoder, images: Tensor) -> TileCatalog:
    """The mode (M = 2 per tile) with ``exist_prob``, ``galaxy_prob``, ``flux_err`` and
    ``log_flux_sd`` per source; border tiles cropped as the encoder reports them."""
    post = encoder.posterior(encoder(images), use_mode=True)
    q1, q2, first, second = post.q1, post.q2, post.first, post.second
    assert q1.count_logits is not None
    counts = torch.softmax(q1.count_logits, dim=-1)
    data: dict[str, Tensor] = {"n_sources": post.n_sources}
    for k, v in first.items():
        data[k] = _per_source(v, second[k])
    sd1, err1 = _flux_spread(q1, first["source_type"][..., 0])
    sd2, err2 = _flux_spread(q2, second["source_type"][..., 0])
    data["exist_prob"] = _per_source(1 - counts[..., :1], counts[..., 2:])
    data["galaxy_prob"] = _per_source(q1.galaxy_prob[..., None], q2.galaxy_prob[..., None])
    data["flux_err"] = _per_source(err1, err2)
    data["log_flux_sd"] = _per_source(sd1, sd2)
    cat = TileCatalog(encoder.tile_slen, data).zero_inactive()
    b = encoder.border_tiles
    return cat.symmetric_crop(b) if b else cat


@torch.no_grad()
def posterior_samples(
    encoder: Encoder, images: Tensor, n_samples: int, generator: torch.Generator
) -> list[TileCatalog]:
    """``n_samples`` draws from q (each a tile catalog like the mode, without the extras)."""
    features = encoder(images)
    return [encoder.sample_features(features, False, generator) for _ in range(n_samples)]
