"""Spatially autoregressive ("checkerboard") tiling: the colour layout of the tile grid, the
encoding of the sources already inferred, and the network that embeds it.

Regier (2025), "Neural posterior estimation with autoregressive tiling" (arXiv 2510.03074):
tiles are coloured so that tiles of one colour are never neighbours (``colors`` = 4: colour
``2 (i % 2) + (j % 2)`` of tile (i, j), tiles of a colour one tile apart; ``colors`` = 2:
``(i + j) % 2``, a colour's tiles touch only at corners). q factorises over colours,

    q(z | x) = ∏_k q(z_k | x, z_<k),

where z_k holds the tiles of colour k. Tiles of colour k are inferred given the sources already
reported for colours < k (their **history**): a tile on the border between two tiles then knows
what its neighbour reported, so a source straddling the border is neither reported twice nor
dropped. Within a colour, tiles are independent given x and the history, as in the
independent tiling.

The history enters as :data:`CONTEXT_FEATURES` channels per tile (:func:`context_features`,
then :func:`mask_context`): where the tile is known (colour < k)

    [known = 1, count / 2, then for the brightest and the second-brightest source (reference
    band): row and column (centred, 2 loc - 1), log(r flux) / 5, galaxy flag, presence]

with the count clipped at 2 and absent sources zero, and all zeros where the tile is not known.
:func:`context_embed` maps them through a 3×3 convolution (each tile sees its 8 neighbours'
history), SiLU and a 1×1 convolution to ``hidden`` channels that are added to the tile features
before the marginal and conditional heads; the last convolution starts at zero, so an untrained
checkerboard encoder starts as the independent one.

A colour's tiles are one or two stride-2 **subgrids** of the tile grid (:func:`color_offsets`):
the heads are evaluated there only (:func:`subgrid`, and a strided convolution for the
conditional head's 3×3 kernel, :func:`conv2d_at`), so a colour's pass costs a quarter of a
full pass of the heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hpc_bliss.catalog import TileCatalog

TILINGS = ("independent", "checkerboard")  #: the values of ``model.tiling``
COLORS = (2, 4)  #: the colour counts a checkerboard may have
HISTORY_SOURCES = 2  #: sources per known tile in the history (the encoder reports at most 2)
#: channels of :func:`context_features`: known, count, then 5 per history source
CONTEXT_FEATURES = 2 + 5 * HISTORY_SOURCES


def tile_colors(ht: int, wt: int, colors: int, device: torch.device | str = "cpu") -> Tensor:
    """(Ht, Wt) int64 colour of every tile: ``2 (i % 2) + (j % 2)`` for 4 colours,
    ``(i + j) % 2`` for 2."""
    if colors not in COLORS:
        raise ValueError(f"colors must be one of {COLORS}, got {colors}")
    i = torch.arange(ht, device=device)[:, None] % 2
    j = torch.arange(wt, device=device)[None, :] % 2
    return 2 * i + j if colors == 4 else (i + j) % 2


def color_offsets(colors: int, k: int) -> list[tuple[int, int]]:
    """The subgrids (a, b) (tiles (a + 2i, b + 2j)) whose union is colour ``k``'s tiles."""
    if colors == 4:
        return [(k // 2, k % 2)]
    return [(0, 0), (1, 1)] if k == 0 else [(0, 1), (1, 0)]


def subgrid(catalog: TileCatalog, at: tuple[int, int]) -> TileCatalog:
    """The tiles (a + 2i, b + 2j) of ``catalog``, ``at`` = (a, b)."""
    a, b = at
    return TileCatalog(catalog.tile_slen, {k: v[:, a::2, b::2] for k, v in catalog.data.items()})


def conv2d_at(x: Tensor, weight: Tensor, bias: Tensor | None, at: tuple[int, int] | None) -> Tensor:
    """A stride-1 convolution with an odd square kernel and padding ``kernel // 2``, at every
    pixel (``at`` None) or at the pixels (a + 2i, b + 2j) only (``at`` = (a, b)): the same
    sums, a quarter of the work."""
    p = weight.shape[-1] // 2
    if at is None:
        return nn.functional.conv2d(x, weight, bias, padding=p)
    a, b = at
    padded = nn.functional.pad(x, (p - b, p, p - a, p))  # window 0 centred on (a, b)
    return nn.functional.conv2d(padded, weight, bias, stride=2)


class Canvas:
    """Per-tile tensors (N, Ht, Wt, ...) of the whole grid, filled subgrid by subgrid (zeros
    where nothing was put yet): ``parts[part][key]``."""

    def __init__(self, n: int, ht: int, wt: int) -> None:
        self.shape = (n, ht, wt)
        self.parts: dict[str, dict[str, Tensor]] = {}

    def put(self, part: str, at: tuple[int, int], values: dict[str, Tensor]) -> None:
        """Write ``values`` (N, h, w, ...) at subgrid ``at`` of ``part``."""
        store = self.parts.setdefault(part, {})
        a, b = at
        for k, v in values.items():
            if k not in store:
                store[k] = v.new_zeros(*self.shape, *v.shape[3:])
            store[k][:, a::2, b::2] = v

    @property
    def points(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The parts ``first`` and ``second`` (the encoder's per-tile sources)."""
        return self.parts["first"], self.parts["second"]


def context_features(history: TileCatalog, ref_band: int) -> Tensor:
    """(N, :data:`CONTEXT_FEATURES`, Ht, Wt): the encoding of every tile of ``history`` as
    a known tile (see the module docstring); :func:`mask_context` keeps the known ones.

    Sources are ranked by ``fluxes[..., ref_band]``, so the encoding does not depend on the
    order of the catalog's slots; a tile's sources beyond the second are left out.
    """
    top = history.get_brightest_sources_per_tile(ref_band, HISTORY_SOURCES)
    on = top.is_on_mask.float()[..., None]  # (N, Ht, Wt, 2, 1)
    locs = top["locs"].float() * 2 - 1
    flux = top.fluxes[..., ref_band : ref_band + 1].float()
    log_flux = torch.log(flux.clamp_min(1e-2)) / 5
    is_gal = top.galaxy_bools.float()
    per_source = torch.cat([locs, log_flux, is_gal, torch.ones_like(on)], dim=-1) * on
    count = top["n_sources"].float()[..., None] / HISTORY_SOURCES
    x = torch.cat([torch.ones_like(count), count, per_source.flatten(-2)], dim=-1)
    return x.permute(0, 3, 1, 2)


def mask_context(context: Tensor, known: Tensor) -> Tensor:
    """:func:`context_features` (N, C, Ht, Wt) on the tiles where the bool ``known`` (Ht, Wt)
    is true, zero (the known flag too) elsewhere."""
    return context * known.to(context.dtype)


def context_embed(hidden: int) -> nn.Sequential:
    """CONTEXT_FEATURES -> ``hidden`` channels: 3×3 conv (the neighbours' history), SiLU,
    1×1 conv initialised at zero."""
    last = nn.Conv2d(hidden, hidden, 1)
    nn.init.zeros_(last.weight)
    assert last.bias is not None
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(CONTEXT_FEATURES, hidden, 3, padding=1), nn.SiLU(), last)


def only_on(catalog: TileCatalog, keep: Tensor) -> TileCatalog:
    """``catalog`` with the tiles where the bool ``keep`` (Ht, Wt) is false emptied
    (``n_sources`` 0: their slots are inactive)."""
    n = catalog["n_sources"]
    return TileCatalog(catalog.tile_slen, {**catalog.data, "n_sources": torch.where(keep, n, 0)})
