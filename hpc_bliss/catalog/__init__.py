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

from hpc_bliss.catalog.base import (
    REF_BAND,
    TILE_KEYS,
    CatalogError,
    ImageIndex,
    mag_to_nmgy,
    nmgy_to_mag,
)
from hpc_bliss.catalog.full import FullCatalog
from hpc_bliss.catalog.tile import TileCatalog

__all__ = [
    "REF_BAND",
    "TILE_KEYS",
    "CatalogError",
    "FullCatalog",
    "ImageIndex",
    "TileCatalog",
    "mag_to_nmgy",
    "nmgy_to_mag",
]
