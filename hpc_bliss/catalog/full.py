"""Full (image-level) catalogs: sources of whole H×W images with pixel positions, and their
conversion back to tile catalogs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hpc_bliss.catalog.base import (
    FLUX_KEYS,
    LAST_DIM,
    REF_BAND,
    TILE_KEYS,
    CatalogBase,
    CatalogError,
    check_shape,
    mask_inactive,
    validate_keys,
)
from hpc_bliss.catalog.tile import TileCatalog


class FullCatalog(CatalogBase):
    """Sources of whole H x W images: ``n_sources`` int64 (N,), ``plocs`` float (N, Mf, 2) pixels
    (row, col), other per-source keys (N, Mf, k); slots >= n_sources are zero.

    ``tile_fields`` optionally holds per-tile tensors (N, H/tile_slen, W/tile_slen, k) (shear,
    convergence) that :meth:`to_tile_catalog` puts back into the tile catalog.
    """

    _loc_key = "plocs"

    def __init__(
        self,
        height: int,
        width: int,
        data: dict[str, Tensor],
        tile_fields: dict[str, Tensor] | None = None,
        tile_slen: int | None = None,
    ) -> None:
        if height < 1 or width < 1:
            raise CatalogError(f"image size must be positive, got {height}x{width}")
        validate_keys("FullCatalog", data, "plocs", ("N",), tiled=False)
        self.height, self.width = int(height), int(width)
        self.data = dict(data)
        self.tile_fields = dict(tile_fields) if tile_fields else {}
        self.tile_slen = tile_slen
        if self.tile_fields:
            if tile_slen is None or tile_slen < 1 or height % tile_slen or width % tile_slen:
                raise CatalogError(
                    f"tile_fields need a tile_slen dividing {height}x{width}, got {tile_slen!r}"
                )
            lead = [("N", self.batch_size), ("Ht", height // tile_slen), ("Wt", width // tile_slen)]
            for k, v in self.tile_fields.items():
                check_shape("FullCatalog tile_fields", k, v, [*lead, ("k", LAST_DIM.get(k))])

    def _map(self, fn: Callable[[Tensor], Tensor]) -> FullCatalog:
        return FullCatalog(
            self.height,
            self.width,
            {k: fn(v) for k, v in self.data.items()},
            {k: fn(v) for k, v in self.tile_fields.items()},
            self.tile_slen,
        )

    def _tile_positions(self, ts: int) -> tuple[Tensor, Tensor, Tensor]:
        """(tile index (N, Mf, 2), locs in the tile (N, Mf, 2), inside the image (N, Mf))."""
        h, w = self.height, self.width
        p = self.data["plocs"]
        finite = torch.isfinite(p)
        p = torch.where(finite, p, -ts).clamp(-ts, max(h, w) + ts)  # keeps OOB points OOB
        # Exact: i*ts <= p < (i+1)*ts (integers, exact in float) implies i <= fl(p/ts) < i+1.
        idx = torch.floor(p / ts).long()
        locs = ((p - idx.to(p.dtype) * ts) / ts).clamp(0.0, 1.0 - torch.finfo(p.dtype).eps / 2)
        limits = torch.tensor([h // ts, w // ts], device=self.device)
        inside = ((idx >= 0) & (idx < limits) & finite).all(-1)
        return idx, locs, inside

    def _brightest_per_tile(
        self, tile: Tensor, tile_ids: Tensor, max_sources: int, band: int
    ) -> Tensor:
        """``tile`` (N, Mf) with the sources beyond a tile's ``max_sources`` brightest in
        ``band`` (ties and catalogs without fluxes: the earliest) sent to no tile."""
        n, mf, dev = self.batch_size, self.max_sources, self.device
        n_tiles = tile_ids.shape[1] - 1
        has_flux = any(k in self.data for k in FLUX_KEYS)
        flux = self.fluxes[..., band] if has_flux else torch.zeros(n, mf, device=dev)
        by_flux = torch.sort(flux, dim=1, descending=True, stable=True).indices
        by_tile = torch.sort(tile.gather(1, by_flux), dim=1, stable=True).indices
        perm = by_flux.gather(1, by_tile)
        sorted_tile = tile.gather(1, perm)
        starts = torch.searchsorted(sorted_tile, tile_ids)
        rank = torch.arange(mf, device=dev) - starts.gather(1, sorted_tile)
        keep = (rank < max_sources).gather(1, torch.argsort(perm, dim=1))
        return torch.where(keep, tile, n_tiles)

    def to_tile_catalog(
        self, tile_slen: int, max_sources: int, filter_oob: bool = True, band: int = REF_BAND
    ) -> TileCatalog:
        """Tile catalog with M = ``max_sources``: tile = floor(plocs / tile_slen), locs the rest.

        Sources fill their tile's slots in catalog order. Sources outside [0, H) x [0, W) (or with
        non-finite plocs) are dropped if ``filter_oob``, else they raise CatalogError. When a tile
        receives more than ``max_sources``, the brightest in ``band`` are kept (ties and catalogs
        without fluxes: the earliest), still in catalog order. Locs are clamped to [0, 1).
        Per-source copies of TILE_KEYS are dropped; ``tile_fields`` are restored as per-tile keys.
        """
        h, w, ts, n, mf = self.height, self.width, tile_slen, self.batch_size, self.max_sources
        if not isinstance(ts, int) or ts < 1 or h % ts or w % ts:
            raise CatalogError(f"tile_slen {ts!r} does not divide the {h}x{w} image")
        if max_sources < 1:
            raise CatalogError(f"max_sources must be >= 1, got {max_sources}")
        if self.tile_fields and ts != self.tile_slen:
            raise CatalogError(
                f"tile_fields were made with tile_slen {self.tile_slen}, not {ts}; "
                "build a FullCatalog without tile_fields to re-tile"
            )
        if mf == 0:  # give the empty catalog one zero slot so that gathers have a source
            data = {
                k: v if k == "n_sources" else v.new_zeros(n, 1, v.shape[-1])
                for k, v in self.data.items()
            }
            padded = FullCatalog(h, w, data, self.tile_fields, self.tile_slen)
            return padded.to_tile_catalog(ts, max_sources, filter_oob, band)
        ht, wt, n_tiles, dev = h // ts, w // ts, (h // ts) * (w // ts), self.device
        idx, locs, inside = self._tile_positions(ts)
        on = self.is_on_mask
        if not filter_oob and bool((on & ~inside).any()):
            raise CatalogError(
                f"active sources lie outside the {h}x{w} image; use filter_oob=True to drop them"
            )
        tile = torch.where(on & inside, idx[..., 0] * wt + idx[..., 1], n_tiles)  # n_tiles: none
        tile_ids = torch.arange(n_tiles + 1, device=dev).expand(n, n_tiles + 1).contiguous()
        if mf > max_sources:  # a tile may overflow: keep its brightest
            tile = self._brightest_per_tile(tile, tile_ids, max_sources, band)
        perm = torch.sort(tile, dim=1, stable=True).indices
        starts = torch.searchsorted(tile.gather(1, perm), tile_ids)
        counts = starts[:, 1:] - starts[:, :-1]  # (N, Ht*Wt), <= max_sources
        slots = torch.arange(max_sources, device=dev)
        valid = (slots < counts.unsqueeze(-1)).reshape(n, ht, wt, max_sources)
        pos = (starts[:, :-1, None] + slots).reshape(n, n_tiles * max_sources).clamp(max=mf - 1)
        src = perm.gather(1, pos)

        def take(v: Tensor) -> Tensor:  # (N, Mf, k) -> (N, Ht, Wt, max_sources, k)
            k = v.shape[-1]
            picked = v.gather(1, src.unsqueeze(-1).expand(n, n_tiles * max_sources, k))
            return mask_inactive(picked.reshape(n, ht, wt, max_sources, k), valid)

        out = {"n_sources": counts.reshape(n, ht, wt), "locs": take(locs)}
        for k, v in self.data.items():
            if k not in ("n_sources", "plocs", *TILE_KEYS):
                out[k] = take(v)
        out.update(self.tile_fields)
        return TileCatalog(ts, out)
