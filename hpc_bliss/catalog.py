"""Tile catalogs and full (image-level) catalogs of stars and galaxies.

* An image has ``B`` bands of ``H x W`` pixels cut into square tiles of ``tile_slen`` pixels;
  ``Ht = H / tile_slen``, ``Wt = W / tile_slen``. ``N`` is the batch size (number of images).
* A :class:`TileCatalog` holds per-tile tensors of leading shape ``(N, Ht, Wt)`` and per-source
  tensors ``(N, Ht, Wt, M, k)``; ``M`` is the maximum number of sources per tile.
* Slot ``s`` of a tile is active iff ``s < n_sources``; inactive slots are always zero and every
  operation here keeps it (constructors trust it; see :meth:`TileCatalog.zero_inactive`).
* ``locs`` are (row, col) in ``[0, 1)`` within a tile; pixel coordinates are
  ``plocs = (tile_index + locs) * tile_slen`` (row, col) with the origin at the top-left corner.
* Fluxes are nanomaggies per band; the reference band is index 2 (r). ``source_type``: 0 star,
  1 galaxy. ``galaxy_params`` = (disk_frac, beta_radians, disk_q, a_d arcsec, bulge_q, a_b arcsec).
"""

from __future__ import annotations

from collections.abc import Callable, KeysView, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from hpc_bliss.errors import HpcBlissError

TILE_KEYS: tuple[str, ...] = ("shear", "convergence")
REF_BAND = 2
_LAST_DIM = {
    "locs": 2,
    "plocs": 2,
    "source_type": 1,
    "galaxy_params": 6,
    "shear": 2,
    "convergence": 1,
}
_FLOAT_KEYS = {"locs", "plocs", "star_fluxes", "galaxy_fluxes", "galaxy_params", *TILE_KEYS}
_FLUX_KEYS = ("star_fluxes", "galaxy_fluxes")

ImageIndex = int | slice | Sequence[int] | Tensor


class CatalogError(HpcBlissError, ValueError):
    """A catalog key is missing or has the wrong shape, dtype or values."""


def _float(x: Tensor | float) -> Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.float()


def nmgy_to_mag(flux: Tensor | float) -> Tensor:
    """AB magnitude ``22.5 - 2.5 log10(flux)`` of a flux in nmgy; ``flux <= 0`` gives +inf."""
    flux = _float(flux)
    return torch.where(flux > 0, 22.5 - 2.5 * torch.log10(flux), torch.inf)


def mag_to_nmgy(mag: Tensor | float) -> Tensor:
    """Flux in nanomaggies of an AB magnitude (inverse of :func:`nmgy_to_mag`; +inf gives 0)."""
    return torch.pow(10.0, (22.5 - _float(mag)) / 2.5)


def _check(owner: str, key: str, t: object, dims: Sequence[tuple[str, int | None]]) -> None:
    """Raise CatalogError unless ``t`` is a tensor of shape ``dims`` (None: any) and dtype."""
    names = "(" + ", ".join(name for name, _ in dims) + ")"
    if not isinstance(t, Tensor):
        raise CatalogError(
            f"{owner} key {key!r} must be a torch.Tensor of shape {names}, got {type(t).__name__}"
        )
    want = tuple(size for _, size in dims)
    if t.dim() != len(want) or any(w not in (None, s) for w, s in zip(want, t.shape, strict=False)):
        exp = ", ".join("?" if w is None else str(w) for w in want)
        raise CatalogError(
            f"{owner} key {key!r} has shape {tuple(t.shape)}, expected {names} = ({exp})"
        )
    if key in ("n_sources", "source_type") and t.dtype != torch.int64:
        raise CatalogError(f"{owner} key {key!r} has dtype {t.dtype}, expected torch.int64")
    if key in _FLOAT_KEYS and not t.is_floating_point():
        raise CatalogError(f"{owner} key {key!r} has dtype {t.dtype}, expected a float dtype")


def _validate(
    owner: str, data: dict[str, Tensor], loc_key: str, lead_names: tuple[str, ...], tiled: bool
) -> int:
    """Check mandatory keys, shapes, dtypes, devices and n_sources range; return the slot count."""
    for key in ("n_sources", loc_key):
        if key not in data:
            raise CatalogError(f"{owner} is missing mandatory key {key!r}")
    n = data["n_sources"]
    _check(owner, "n_sources", n, [(name, None) for name in lead_names])
    named = list(zip(lead_names, n.shape, strict=True))
    _check(owner, loc_key, data[loc_key], [*named, ("M", None), ("2", 2)])
    m = data[loc_key].shape[-2]
    lead = [*named, ("M", m)]
    n_bands: int | None = None
    for key, t in data.items():
        if key in ("n_sources", loc_key):
            continue
        if tiled and key in TILE_KEYS:
            _check(owner, key, t, [*lead[:-1], (str(_LAST_DIM[key]), _LAST_DIM[key])])
        elif key in _FLUX_KEYS:
            _check(owner, key, t, [*lead, ("B", n_bands)])
            n_bands = t.shape[-1]
        else:
            last = _LAST_DIM.get(key)
            _check(owner, key, t, [*lead, ("k", None) if last is None else (str(last), last)])
        if t.device != n.device:
            raise CatalogError(f"{owner} key {key!r} is on {t.device}, n_sources on {n.device}")
    if n.numel() and (int(n.min()) < 0 or int(n.max()) > m):
        raise CatalogError(f"{owner} key 'n_sources' has values outside [0, {m}] (M = {m})")
    return m


def _mask(v: Tensor, on: Tensor) -> Tensor:
    """Zero the entries of ``v`` (..., k) where the boolean ``on`` (...) is False."""
    return torch.where(on.unsqueeze(-1), v, v.new_zeros(()))


C = TypeVar("C", bound="_Catalog")


class _Catalog:
    """Shared behaviour of tile and full catalogs (``data`` dict, fluxes, magnitudes)."""

    data: dict[str, Tensor]
    _loc_key: str

    def keys(self) -> KeysView[str]:
        """Names of the stored tensors."""
        return self.data.keys()

    def __getitem__(self, key: str) -> Tensor:
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    @property
    def batch_size(self) -> int:
        """N, the number of images."""
        return self.data["n_sources"].shape[0]

    @property
    def max_sources(self) -> int:
        """M (sources per tile) or Mf (sources per image): the number of source slots."""
        return self.data[self._loc_key].shape[-2]

    @property
    def device(self) -> torch.device:
        return self.data["n_sources"].device

    @property
    def is_on_mask(self) -> Tensor:
        """Bool (..., M): slot s is active iff s < n_sources."""
        slots = torch.arange(self.max_sources, device=self.device)
        return slots < self.data["n_sources"].unsqueeze(-1)

    def _type_bools(self, kind: int) -> Tensor:
        on = self.is_on_mask.unsqueeze(-1)
        if "source_type" in self.data:
            return on & (self.data["source_type"] == kind)
        # No source_type: all sources are stars, unless only galaxy fluxes are given.
        default = 1 if ("galaxy_fluxes" in self.data and "star_fluxes" not in self.data) else 0
        return on if kind == default else torch.zeros_like(on)

    @property
    def star_bools(self) -> Tensor:
        """Bool (..., M, 1): active and a star (source_type 0)."""
        return self._type_bools(0)

    @property
    def galaxy_bools(self) -> Tensor:
        """Bool (..., M, 1): active and a galaxy (source_type 1)."""
        return self._type_bools(1)

    @property
    def fluxes(self) -> Tensor:
        """Float (..., M, B) nanomaggies: star_fluxes for stars, galaxy_fluxes for galaxies.

        A missing flux key counts as zero flux for that source type; inactive slots are zero.
        """
        out = None
        for key, bools in (("star_fluxes", self.star_bools), ("galaxy_fluxes", self.galaxy_bools)):
            if key in self.data:
                v = self.data[key]
                out = torch.where(bools, v, 0.0 if out is None else out)
        if out is None:
            raise CatalogError("catalog has neither 'star_fluxes' nor 'galaxy_fluxes'")
        return out

    def _map(self: C, fn: Callable[[Tensor], Tensor]) -> C:
        raise NotImplementedError

    def to(self: C, device: torch.device | str) -> C:
        """Copy of the catalog with every tensor (``tile_fields`` included) on ``device``."""
        return self._map(lambda v: v.to(device))

    def select(self: C, index: ImageIndex) -> C:
        """Catalog of the images picked by ``index`` (int, int list/tensor, bool tensor, slice)."""
        idx = (
            index
            if isinstance(index, slice)
            else torch.as_tensor([index] if isinstance(index, int) else index, device=self.device)
        )
        return self._map(lambda v: v[idx])

    def magnitudes(self, band: int = REF_BAND) -> Tensor:
        """AB magnitudes (..., M) in ``band``; inactive slots and fluxes <= 0 are +inf."""
        mags = nmgy_to_mag(self.fluxes[..., band])
        return torch.where(self.is_on_mask, mags, torch.inf)


class TileCatalog(_Catalog):
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
        _validate("TileCatalog", data, "locs", ("N", "Ht", "Wt"), tiled=True)
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
            out[k] = _mask(self.data[k], on)
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
            out[k] = _mask(picked, valid)
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
            return _mask(flat.gather(1, src.unsqueeze(-1).expand(n, mf, v.shape[-1])), valid)

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
        return FullCatalog(ht * ts, wt * ts, data, tile_fields or None, ts)


class FullCatalog(_Catalog):
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
        _validate("FullCatalog", data, "plocs", ("N",), tiled=False)
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
                _check("FullCatalog tile_fields", k, v, [*lead, ("k", _LAST_DIM.get(k))])

    def _map(self, fn: Callable[[Tensor], Tensor]) -> FullCatalog:
        return FullCatalog(
            self.height,
            self.width,
            {k: fn(v) for k, v in self.data.items()},
            {k: fn(v) for k, v in self.tile_fields.items()},
            self.tile_slen,
        )

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
        p = self.data["plocs"]
        finite = torch.isfinite(p)
        p = torch.where(finite, p, -ts).clamp(-ts, max(h, w) + ts)  # keeps OOB points OOB
        # Exact: i*ts <= p < (i+1)*ts (integers, exact in float) implies i <= fl(p/ts) < i+1.
        idx = torch.floor(p / ts).long()
        locs = ((p - idx.to(p.dtype) * ts) / ts).clamp(0.0, 1.0 - torch.finfo(p.dtype).eps / 2)
        inside = ((idx >= 0) & (idx < torch.tensor([ht, wt], device=dev)) & finite).all(-1)
        on = self.is_on_mask
        if not filter_oob and bool((on & ~inside).any()):
            raise CatalogError(
                f"active sources lie outside the {h}x{w} image; use filter_oob=True to drop them"
            )
        tile = torch.where(on & inside, idx[..., 0] * wt + idx[..., 1], n_tiles)  # n_tiles: none
        tile_ids = torch.arange(n_tiles + 1, device=dev).expand(n, n_tiles + 1).contiguous()
        if mf > max_sources:  # a tile may overflow: rank sources within each tile by flux
            has_flux = any(k in self.data for k in _FLUX_KEYS)
            flux = self.fluxes[..., band] if has_flux else torch.zeros(n, mf, device=dev)
            by_flux = torch.sort(flux, dim=1, descending=True, stable=True).indices
            by_tile = torch.sort(tile.gather(1, by_flux), dim=1, stable=True).indices
            perm = by_flux.gather(1, by_tile)
            sorted_tile = tile.gather(1, perm)
            starts = torch.searchsorted(sorted_tile, tile_ids)
            rank = torch.arange(mf, device=dev) - starts.gather(1, sorted_tile)
            keep = (rank < max_sources).gather(1, torch.argsort(perm, dim=1))
            tile = torch.where(keep, tile, n_tiles)
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
            return _mask(picked.reshape(n, ht, wt, max_sources, k), valid)

        out = {"n_sources": counts.reshape(n, ht, wt), "locs": take(locs)}
        for k, v in self.data.items():
            if k not in ("n_sources", "plocs", *TILE_KEYS):
                out[k] = take(v)
        out.update(self.tile_fields)
        return TileCatalog(ts, out)
