"""Tile catalogs: per-tile tensors (N, Ht, Wt, ...) of at most M sources per tile."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hpc_bliss.catalog.base import (
    REF_BAND,
    TILE_KEYS,
    CatalogBase,
    CatalogError,
    mask_inactive,
    validate_keys,
)

if TYPE_CHECKING:
    from hpc_bliss.catalog.full import FullCatalog


class TileCatalog(CatalogBase):
    """Sources stored per tile: per-tile tensors (N, Ht, Wt, ...), per-source (N, Ht, Wt, M, k).

    Keys: ``n_sources`` int64 (N, Ht, Wt) and ``locs`` float (N, Ht, Wt, M, 2) are mandatory;
    optional ``source_type`` int64 (.., M, 1), ``star_fluxes``/``galaxy_fluxes`` float (.., M, B),
    ``galaxy_params`` float (.., M, 6), per-tile ``shear`` (N, Ht, Wt, 2) and ``convergence``
    (N, Ht, Wt, 1). Any other key must be per-source, shape (N, Ht, Wt, M, k).
    """

    _loc_key = "locs"

    def __init__(self, tile_slen: int, data: dict[str, Tensor]) -> None:
        if not isinstance(tile_slen, int) or tile_slen < 1:
            raise CatalogError(f"tile_slen must be a positive int, got {tile_slen!r}")
        validate_keys("TileCatalog", data, "locs", ("N", "Ht", "Wt"), tiled=True)
        if min(data["locs"].shape[1:4]) < 1:
            raise CatalogError(
                f"TileCatalog key 'locs' has shape {tuple(data['locs'].shape)}, "
                "expected Ht, Wt, M >= 1"
            )
        self.tile_slen = tile_slen
        self.data = dict(data)

    @property
    def n_tiles_h(self) -> int:
        """Ht, tiles per column."""
        return self.data["n_sources"].shape[1]

    @property
    def n_tiles_w(self) -> int:
        """Wt, tiles per row."""
        return self.data["n_sources"].shape[2]

    def _source_keys(self) -> list[str]:
        return [k for k in self.data if k != "n_sources" and k not in TILE_KEYS]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> TileCatalog:
        return TileCatalog(self.tile_slen, {k: fn(v) for k, v in self.data.items()})

    def zero_inactive(self) -> TileCatalog:
        """Copy with every per-source tensor zeroed in inactive slots."""
        on, out = self.is_on_mask, dict(self.data)
        for k in self._source_keys():
            out[k] = mask_inactive(self.data[k], on)
        return TileCatalog(self.tile_slen, out)

    def symmetric_crop(self, n_tiles: int) -> TileCatalog:
        """Drop ``n_tiles`` tiles on each of the four sides: (N, Ht, Wt) -> (N, Ht-2n, Wt-2n)."""
        ht, wt = self.n_tiles_h, self.n_tiles_w
        if n_tiles < 0 or 2 * n_tiles >= min(ht, wt):
            raise CatalogError(f"cannot crop {n_tiles} tiles per side from a {ht}x{wt} tile grid")
        sl_h, sl_w = slice(n_tiles, ht - n_tiles), slice(n_tiles, wt - n_tiles)
        return TileCatalog(self.tile_slen, {k: v[:, sl_h, sl_w] for k, v in self.data.items()})

    def _gather_slots(self, order: Tensor, n_new: Tensor) -> TileCatalog:
        """New catalog whose slot j holds old slot ``order[..., j]``; slots >= n_new are zeroed."""
        valid = torch.arange(order.shape[-1], device=self.device) < n_new.unsqueeze(-1)
        out = {k: v for k, v in self.data.items() if k in TILE_KEYS}
        out["n_sources"] = n_new
        for k in self._source_keys():
            v = self.data[k]
            picked = v.gather(3, order.unsqueeze(-1).expand(*order.shape, v.shape[-1]))
            out[k] = mask_inactive(picked, valid)
        return TileCatalog(self.tile_slen, out)

    def filter_by_flux(self, min_flux: float, band: int = REF_BAND) -> TileCatalog:
        """Drop sources with ``fluxes[..., band] < min_flux`` (nmgy); the rest keep their order."""
        keep = self.is_on_mask & (self.fluxes[..., band] >= min_flux)
        order = torch.sort((~keep).to(torch.int32), dim=-1, stable=True).indices
        return self._gather_slots(order, keep.sum(-1))

    filter_tile_catalog_by_flux = filter_by_flux  # BLISS-style alias

    def get_brightest_sources_per_tile(
        self, band: int = REF_BAND, top_k: int = 1, exclude_num: int = 0
    ) -> TileCatalog:
        """Catalog with M' = top_k holding flux ranks exclude_num .. exclude_num+top_k-1 per tile.

        Ranking is by ``fluxes[..., band]``, descending, ties kept in slot order;
        ``n_sources = clamp(n - exclude_num, 0, top_k)``. Per-tile keys are unchanged.
        """
        if top_k < 1 or exclude_num < 0:
            raise CatalogError(f"need top_k >= 1, exclude_num >= 0; got {top_k}, {exclude_num}")
        on = self.is_on_mask
        by_flux = torch.sort(self.fluxes[..., band], dim=-1, descending=True, stable=True).indices
        active_first = torch.sort((~on.gather(-1, by_flux)).to(torch.int32), dim=-1, stable=True)
        order = by_flux.gather(-1, active_first.indices)[..., exclude_num : exclude_num + top_k]
        if order.shape[-1] < top_k:  # ranks beyond M: padded, then zeroed as inactive
            pad = order.new_zeros(*order.shape[:-1], top_k - order.shape[-1])
            order = torch.cat([order, pad], dim=-1)
        n_new = (self.data["n_sources"] - exclude_num).clamp(0, top_k)
        return self._gather_slots(order, n_new)

    def to_full_catalog(self) -> FullCatalog:
        """Full catalog of the same sources, ordered by tile (row-major) then slot.

        ``Mf = max(1, max over images of the source count)``, so shapes are never empty (an
        empty batch gets one zero slot). ``plocs`` replace ``locs``; each per-tile key also gets a
        per-source copy (N, Mf, k) taken from the source's tile, and the per-tile tensors go to
        ``tile_fields`` so that :meth:`FullCatalog.to_tile_catalog` can restore them.
        """
        n, ht, wt, m = self.data["locs"].shape[:4]
        ts, dev, locs = self.tile_slen, self.device, self.data["locs"]
        on = self.is_on_mask.reshape(n, ht * wt * m)
        csum = on.cumsum(1)
        counts = csum[:, -1]
        mf = max(int(counts.max()), 1) if n > 0 else 1
        slots = torch.arange(mf, device=dev)
        # Source j of an image is the first flat (tile, slot) index whose cumulative count is j+1.
        src = torch.searchsorted(csum, (slots + 1).expand(n, mf).contiguous())
        src = src.clamp(max=ht * wt * m - 1)
        valid = slots < counts.unsqueeze(-1)

        def take(v: Tensor) -> Tensor:  # (N, Ht, Wt, M, k) -> (N, Mf, k)
            flat = v.reshape(n, ht * wt * m, v.shape[-1])
            return mask_inactive(
                flat.gather(1, src.unsqueeze(-1).expand(n, mf, v.shape[-1])), valid
            )

        grid = torch.meshgrid(
            torch.arange(ht, device=dev), torch.arange(wt, device=dev), indexing="ij"
        )
        origin = (torch.stack(grid, -1).to(locs.dtype) * ts)[None, :, :, None, :]
        # Keep plocs strictly inside the source's tile even when (i + loc) rounds up to i + 1.
        plocs = torch.minimum(origin + locs * ts, torch.nextafter(origin + ts, origin))
        data = {"n_sources": counts, "plocs": take(plocs)}
        for k in self._source_keys():
            if k != "locs":
                data[k] = take(self.data[k])
        tile_fields = {k: v for k, v in self.data.items() if k in TILE_KEYS}
        for k, v in tile_fields.items():
            data[k] = take(v.unsqueeze(3).expand(n, ht, wt, m, v.shape[-1]))
        from hpc_bliss.catalog.full import FullCatalog

        return FullCatalog(ht * ts, wt * ts, data, tile_fields or None, ts)
