"""Training loss (-log q of the true tile catalog, up to 2 sources per tile) and count accuracy."""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_bliss.catalog import REF_BAND, TileCatalog
from hpc_bliss.model.checkerboard import color_offsets, only_on, subgrid
from hpc_bliss.model.encoder import Encoder
from hpc_bliss.model.variational import MAX_COUNT, VariationalDist


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

    With the checkerboard tiling (teacher forcing), a tile of colour k is scored by the heads
    given the filtered target itself on the tiles of colours < k (the history the encoder would
    have reported there), so the sum over tiles is -log q(z | x) = -Σ_k log q(z_k | x, z_<k).
    """
    if min_flux > 0:
        target = target.filter_by_flux(min_flux, band)
    n = target["n_sources"]
    z1 = target.get_brightest_sources_per_tile(band, 1, 0)
    z2 = target.get_brightest_sources_per_tile(band, 1, 1)
    if not encoder.autoregressive:
        base = encoder.conditional_base(features)  # shared by the two orders
        pair = (
            encoder.conditional(features, z1, None, base),
            encoder.conditional(features, z2, None, base),
        )
        return _tile_nll(encoder.marginal(features), *pair, n, z1, z2)
    colors = encoder.tile_colors(features)
    history = encoder.history(target)  # the truth as history; each colour sees earlier ones
    out = features.new_zeros(n.shape, dtype=torch.float32)
    for k in range(encoder.colors):
        own = colors == k  # only these tiles' first sources condition the conditional head
        h = encoder.contextualise(features, history, colors < k)
        c1, c2 = only_on(z1, own), only_on(z2, own)
        for at in color_offsets(encoder.colors, k):  # the heads on colour k's tiles only
            a, b = at
            q1 = encoder.marginal(h[..., a::2, b::2].contiguous())  # contiguous: faster convs
            base = encoder.conditional_base(h, at)
            pair = (encoder.conditional(h, c1, at, base), encoder.conditional(h, c2, at, base))
            nll = _tile_nll(q1, *pair, n[:, a::2, b::2], subgrid(z1, at), subgrid(z2, at))
            out[:, a::2, b::2] = nll
    return out


def _tile_nll(
    marginal: VariationalDist,
    given_z1: VariationalDist,
    given_z2: VariationalDist,
    n: Tensor,
    z1: TileCatalog,
    z2: TileCatalog,
) -> Tensor:
    """The per-tile NLL of :func:`double_detection_nll` from the marginal head's q and the
    conditional head's q given z1 and given z2."""
    counts = n.clamp(max=MAX_COUNT)
    a = marginal.nll(z1, counts) + given_z1.nll(z2)
    b = marginal.nll(z2, counts) + given_z2.nll(z1)
    both = -torch.logsumexp(-torch.stack([a, b]), dim=0)
    return torch.where(n >= 2, both, a)
