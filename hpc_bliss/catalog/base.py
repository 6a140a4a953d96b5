"""What tile and full catalogs share: key conventions, shape checks, magnitudes, and the
common base class (batch size, masks, fluxes, device moves, selection)."""

from __future__ import annotations

from collections.abc import Callable, KeysView, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from hpc_bliss.errors import HpcBlissError

TILE_KEYS: tuple[str, ...] = ("shear", "convergence")
REF_BAND = 2
LAST_DIM = {
    "locs": 2,
    "plocs": 2,
    "source_type": 1,
    "galaxy_params": 6,
    "shear": 2,
    "convergence": 1,
}
_FLOAT_KEYS = {"locs", "plocs", "star_fluxes", "galaxy_fluxes", "galaxy_params", *TILE_KEYS}
FLUX_KEYS = ("star_fluxes", "galaxy_fluxes")

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


def check_shape(owner: str, key: str, t: object, dims: Sequence[tuple[str, int | None]]) -> None:
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


def validate_keys(
    owner: str, data: dict[str, Tensor], loc_key: str, lead_names: tuple[str, ...], tiled: bool
) -> int:
    """Check mandatory keys, shapes, dtypes, devices and n_sources range; return the slot count."""
    for key in ("n_sources", loc_key):
        if key not in data:
            raise CatalogError(f"{owner} is missing mandatory key {key!r}")
    n = data["n_sources"]
    check_shape(owner, "n_sources", n, [(name, None) for name in lead_names])
    named = list(zip(lead_names, n.shape, strict=True))
    check_shape(owner, loc_key, data[loc_key], [*named, ("M", None), ("2", 2)])
    m = data[loc_key].shape[-2]
    lead = [*named, ("M", m)]
    n_bands: int | None = None
    for key, t in data.items():
        if key in ("n_sources", loc_key):
            continue
        if tiled and key in TILE_KEYS:
            check_shape(owner, key, t, [*lead[:-1], (str(LAST_DIM[key]), LAST_DIM[key])])
        elif key in FLUX_KEYS:
            check_shape(owner, key, t, [*lead, ("B", n_bands)])
            n_bands = t.shape[-1]
        else:
            last = LAST_DIM.get(key)
            check_shape(owner, key, t, [*lead, ("k", None) if last is None else (str(last), last)])
        if t.device != n.device:
            raise CatalogError(f"{owner} key {key!r} is on {t.device}, n_sources on {n.device}")
    if n.numel() and (int(n.min()) < 0 or int(n.max()) > m):
        raise CatalogError(f"{owner} key 'n_sources' has values outside [0, {m}] (M = {m})")
    return m


def mask_inactive(v: Tensor, on: Tensor) -> Tensor:
    """Zero the entries of ``v`` (..., k) where the boolean ``on`` (...) is False."""
    return torch.where(on.unsqueeze(-1), v, v.new_zeros(()))


C = TypeVar("C", bound="CatalogBase")


class CatalogBase:
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
