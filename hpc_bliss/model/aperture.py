"""The flux heads' aperture anchor (``model.aperture_flux``): per tile and band, the log of the
image's sum over a square aperture around the tile, added to the heads' log-flux means, so the
network learns a correction to a direct measurement rather than the whole flux map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_bliss.model.variational import VariationalDist

#: pixels beyond the tile on each side of the aperture of :func:`aperture_log_flux`
APERTURE_MARGIN = 2
#: nmgy: aperture sums below this (empty tiles, noise) are read as this
APERTURE_FLOOR = 0.1


def aperture_log_flux(images: Tensor, tile_slen: int) -> Tensor:
    """(N, B, Ht, Wt): per tile and band, log of the image's sum (nmgy) over the square of side
    ``tile_slen + 2 * APERTURE_MARGIN`` px centred on the tile (zero beyond the image), floored
    at :data:`APERTURE_FLOOR`. It is the flux heads' starting point: their log-flux means are
    this plus what the network adds, so an isolated source's flux is right to the aperture's
    enclosed fraction before any training, and the network learns the correction (PSF
    fraction, position, neighbours) rather than the whole log-flux map of every band."""
    m = APERTURE_MARGIN
    k = tile_slen + 2 * m
    total = F.avg_pool2d(images.float(), k, stride=tile_slen, padding=m, count_include_pad=True)
    return torch.log((total * (k * k)).clamp_min(APERTURE_FLOOR)).to(images.dtype)


def anchored(params: Tensor, anchor: Tensor | None, n_bands: int, with_counts: bool) -> Tensor:
    """Raw head output (N, P, h, w) with ``anchor`` (N, B, h, w) added to the log-flux means
    of both source types (none added when ``anchor`` is None)."""
    if anchor is None:
        return params
    star, galaxy = VariationalDist.flux_mean_channels(n_bands, with_counts)
    zeros = torch.zeros_like(params)
    zeros[:, star] = anchor.to(params.dtype)
    zeros[:, galaxy] = anchor.to(params.dtype)
    return params + zeros
