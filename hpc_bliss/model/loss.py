"""Training loss (-log q of the true tile catalog, up to 2 sources per tile) and count accuracy."""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_bliss.catalog import REF_BAND, TileCatalog
from hpc_bliss.model.encoder import Encoder
from hpc_bliss.model.variational import MAX_COUNT


def double_detection_nll(
    encoder: Encoder,
    features: Tensor,
    target: TileCatalog,
    min_flux: float = 0.0,
    band: int = REF_BAND,
) -> Tensor:
    """-log q(z | x) per tile (N, Ht, Wt) for up to two sources; ``.mean()`` is the loss.

    ``target`` is filtered to sources with ``fluxes[..., band] >= min_flux`` (nmgy) when
    ``min_flux > 0``; z1, z2 are its brightest and second-brightest sources in ``band``.

    * 0 sources: -log q(count = 0).
    * 1 source: -log q(count = 1, z1). The conditional head scores only sources that exist:
      the count already says there is no second one, so its term is 0.
    * >= 2 sources: the two orders are a mixture, -log(q(2, z1) q(z2 | z1) + q(2, z2) q(z1 | z2)),
      i.e. -logsumexp(-[a, b]). Sources beyond the second are not scored (the count is
      clipped at 2).
    """
    if min_flux > 0:
        target = target.filter_by_flux(min_flux, band)
    n = target["n_sources"]
    counts = n.clamp(max=MAX_COUNT)
    z1 = target.get_brightest_sources_per_tile(band, 1, 0)
    z2 = target.get_brightest_sources_per_tile(band, 1, 1)
    marginal = encoder.marginal(features)
    a = marginal.nll(z1, counts) + encoder.conditional(features, z1).nll(z2)
    b = marginal.nll(z2, counts) + encoder.conditional(features, z2).nll(z1)
    both = -torch.logsumexp(-torch.stack([a, b]), dim=0)
    return torch.where(n >= 2, both, a)
