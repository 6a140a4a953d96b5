"""The HDF5 shard schema (version 1), in one place: every dataset of a shard (name, dtype,
shape, units, storage: chunks, compression, Fletcher-32 checksums), the required root attributes,
the content checksum, the table of galaxy parameters, and the typed records the reader and the
manifest hand out.

The writers (:mod:`hpc_bliss.io.shards`, :mod:`hpc_bliss.io.collective`, dataset.h5 in
:mod:`hpc_bliss.io.manifest`), the reader, the validator and ``scripts/schema_reference.py``
(the README's table) all read it from here. Shapes are written with the axes

    N images, B bands, H×W pixels, Ht×Wt tiles (H / tile_slen × W / tile_slen),
    M sources per tile (``prior.max_sources``)

Nothing here imports torch or h5py: the simulator and the model import the galaxy table too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

SCHEMA_VERSION = 1


# --- galaxy parameters -------------------------------------------------------------------------


@dataclass(frozen=True)
class GalaxyParam:
    """One galaxy parameter: its name, unit ("" for dimensionless) and open interval."""

    name: str
    unit: str
    lower: float
    upper: float  #: math.inf for a positive parameter with no upper bound
    meaning: str

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.upper)


class ParamTable:
    """An ordered table of parameters, indexed by name: ``GALAXY_PARAMS.index("a_d")`` is the
    position of a_d along the last axis of ``galaxy_params``."""

    def __init__(self, rows: tuple[GalaxyParam, ...]) -> None:
        self.rows = rows
        self.names = tuple(p.name for p in rows)
        self._index = {name: i for i, name in enumerate(self.names)}

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"no galaxy parameter {name!r}: one of {', '.join(self.names)}"
            ) from None

    def __getitem__(self, name: str) -> GalaxyParam:
        return self.rows[self.index(name)]

    def __iter__(self) -> Iterator[GalaxyParam]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def by_name(self, values: Any) -> dict[str, Any]:
        """``{name: value}`` of a sequence holding one value per parameter, in table order
        (a list of floats, or the tensors of ``galaxy_params.unbind(-1)``)."""
        return dict(zip(self.names, values, strict=True))


#: ``galaxy_params`` along its last axis: bulge + disk galaxies as BLISS draws them
GALAXY_PARAMS = ParamTable(
    (
        GalaxyParam("disk_frac", "", 0.0, 1.0, "fraction of the flux in the disk"),
        GalaxyParam("beta_radians", "rad", 0.0, math.pi, "position angle of the major axis"),
        GalaxyParam("disk_q", "", 0.0, 1.0, "disk axis ratio (minor / major)"),
        GalaxyParam("a_d", "arcsec", 0.0, math.inf, "disk semi-major half-light radius"),
        GalaxyParam("bulge_q", "", 0.0, 1.0, "bulge axis ratio (minor / major)"),
        GalaxyParam("a_b", "arcsec", 0.0, math.inf, "bulge semi-major half-light radius"),
    )
)
GALAXY_PARAM_NAMES = GALAXY_PARAMS.names
N_GALAXY_PARAMS = len(GALAXY_PARAMS)
N_PSF_PARAMS = 6  #: sigma1, sigma2, b, sigmap, beta, p0 (see hpc_bliss.simulate.psf)
SOURCE_TYPES = ("star", "galaxy")  #: source_type 0 and 1


# --- datasets ----------------------------------------------------------------------------------

#: ``units`` of images and background, by ``render.units``
IMAGE_UNITS = {
    "nmgy": "nanomaggies per pixel, sky-subtracted",
    "nmgy_sky": "nanomaggies per pixel",
    "electrons": "electrons per pixel",
}
GZIP_LEVEL = 1


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a shard: its path in the file, on-disk dtype, shape (axis names from
    the module docstring, or fixed sizes), ``units`` attribute (None: the images' units, which
    depend on ``render.units``), what it holds, and whether ``generate.compression="gzip"``
    compresses it."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    units: str | None
    meaning: str
    compressed: bool = False

    @property
    def key(self) -> str:
        """The name without its group (``tile_catalog/locs`` → ``locs``)."""
        return self.name.rsplit("/", 1)[-1]

    def units_for(self, render_units: str) -> str:
        return self.units if self.units is not None else image_units(render_units)


def image_units(render_units: str) -> str:
    """The ``units`` attribute of images and background for ``render.units``."""
    return IMAGE_UNITS.get(render_units, IMAGE_UNITS["electrons"])


def _galaxy_units() -> str:
    return ", ".join(f"{p.name} ({p.unit})" if p.unit else p.name for p in GALAXY_PARAMS)


def _catalog(
    key: str, dtype: str, shape: tuple[str | int, ...], units: str, meaning: str
) -> DatasetSpec:
    """A tile-catalog dataset: (N, Ht, Wt, *shape), compressed; inactive slots hold 0."""
    name = f"tile_catalog/{key}"
    return DatasetSpec(name, dtype, ("N", "Ht", "Wt", *shape), units, meaning, compressed=True)


#: every dataset of a shard, in the fixed order the content hash uses
DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("images", "float32", ("N", "B", "H", "W"), None, "the noisy images"),
    DatasetSpec("background", "float32", ("N", "B"), None, "sky per pixel, in the images' units"),
    DatasetSpec(
        "psf_params",
        "float32",
        ("N", "B", N_PSF_PARAMS),
        "sigma1, sigma2 (px), b, sigmap (px), beta, p0",
        "the PSF of each band (hpc_bliss.simulate.psf)",
    ),
    _catalog("n_sources", "uint8", (), "count of sources in the tile", "sources in the tile, ≤ M"),
    _catalog(
        "locs",
        "float32",
        ("M", 2),
        "(row, col) within the tile, fraction of tile_slen in [0, 1)",
        "position of each source in its tile",
    ),
    _catalog(
        "source_type",
        "uint8",
        ("M", 1),
        ", ".join(f"{i} {t}" for i, t in enumerate(SOURCE_TYPES)),
        "star or galaxy",
    ),
    _catalog("star_fluxes", "float32", ("M", "B"), "nanomaggies per band", "0 for a galaxy"),
    _catalog("galaxy_fluxes", "float32", ("M", "B"), "nanomaggies per band", "0 for a star"),
    _catalog(
        "galaxy_params",
        "float32",
        ("M", N_GALAXY_PARAMS),
        _galaxy_units(),
        "galaxy shape, one value per galaxy parameter; 0 for a star",
    ),
    _catalog(
        "shear",
        "float32",
        (2,),
        "reduced-shear inputs gamma1, gamma2 (dimensionless)",
        "weak-lensing shear of the tile",
    ),
    _catalog("convergence", "float32", (1,), "kappa (dimensionless)", "weak-lensing convergence"),
)
DATASET_NAMES = tuple(d.name for d in DATASETS)
SPECS = {d.name: d for d in DATASETS}
IMAGE_KEYS = tuple(d.name for d in DATASETS if "/" not in d.name)
CATALOG_KEYS = tuple(d.key for d in DATASETS if d.name.startswith("tile_catalog/"))
#: on-disk dtype of each tile-catalog key
CATALOG_DTYPES = {d.key: d.dtype for d in DATASETS if d.name.startswith("tile_catalog/")}


@dataclass(frozen=True)
class Dims:
    """The sizes the shapes are written in (see the module docstring)."""

    n_images: int
    bands: int
    height: int
    width: int
    tiles_h: int
    tiles_w: int
    max_sources: int

    @classmethod
    def from_prior(cls, prior: Any, n_images: int = 0) -> Dims:
        """From a ``prior`` config section: bands, image_height/width, tile_slen, max_sources."""
        h, w, slen = int(prior.image_height), int(prior.image_width), int(prior.tile_slen)
        return cls(n_images, len(prior.bands), h, w, h // slen, w // slen, int(prior.max_sources))

    def size(self, axis: str | int) -> int:
        if isinstance(axis, int):
            return axis
        sizes = {
            "N": self.n_images,
            "B": self.bands,
            "H": self.height,
            "W": self.width,
            "Ht": self.tiles_h,
            "Wt": self.tiles_w,
            "M": self.max_sources,
        }
        return sizes[axis]


def shape_of(spec: DatasetSpec, dims: Dims) -> tuple[int, ...]:
    """The dataset's full shape, (N, ...)."""
    return tuple(dims.size(axis) for axis in spec.shape)


def storage(
    spec: DatasetSpec, shape: tuple[int, ...], compression: str, checksums: bool = True
) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords of a shard's dataset: one image per chunk, gzip (level
    :data:`GZIP_LEVEL`) for the compressed datasets when ``compression == "gzip"``, and HDF5's
    Fletcher-32 checksum of every chunk, so that any reader of a damaged chunk gets an error
    instead of wrong data. ``checksums=False`` leaves the checksums out (for a benchmark
    measuring their cost; shards are always written with them). An empty dataset (0 images)
    may grow along N, so that its one-image chunks fit."""
    tail = tuple(shape[1:])
    keywords: dict[str, Any] = {"chunks": (1, *tail)}
    if shape[0] == 0:
        keywords["maxshape"] = (None, *tail)
    if compression == "gzip" and spec.compressed:
        keywords |= {"compression": "gzip", "compression_opts": GZIP_LEVEL}
    if checksums:
        keywords["fletcher32"] = True
    return keywords


def shard_name(shard_id: int) -> str:
    """The file name of shard ``shard_id`` in ``<output_dir>/shards/``."""
    return f"shard-{shard_id:06d}.h5"


def content_sha256(items: list[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each ``(name, array)``, in the order given
    (:data:`DATASET_NAMES` for a shard): the same for the same data whoever wrote it."""
    digest = hashlib.sha256()
    for name, arr in items:
        arr = np.ascontiguousarray(arr)
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


# --- root attributes ---------------------------------------------------------------------------

#: root attributes every shard has, and what each holds
ROOT_ATTRS = {
    "schema_version": "this schema's version",
    "hpc_bliss_version": "the package version that wrote the file",
    "shard_id": "the shard's id",
    "split": "train, val or test",
    "seed": "the run's seed",
    "n_images": "N, the number of images",
    "config_yaml": "the resolved config",
    "config_hash": "hash of the resolved config",
    "content_sha256": "hash of the datasets (name, dtype, shape, bytes)",
    "created_utc": "when it was written (UTC, ISO 8601)",
    "host": "host name of the process that wrote it",
    "rank": "MPI rank of that process",
    "device": "torch device it was simulated on",
}
REQUIRED_ATTRS = tuple(ROOT_ATTRS)
#: root attributes a shard may have, and when
OPTIONAL_ATTRS = {
    "edited_utc": "when `hpc-bliss validate --refresh` last accepted an edit of its data (UTC)",
}
#: root attributes that say who wrote a shard and when (they differ between equal shards)
PROVENANCE_ATTRS = ("created_utc", "host", "rank", "device")


# --- typed records -----------------------------------------------------------------------------


class ShardItem(TypedDict):
    """One image as the reader returns it (tensors; the catalog's int keys as int64)."""

    images: Tensor  # float32 (B, H, W)
    background: Tensor  # float32 (B,)
    psf_params: Tensor  # float32 (B, 6)
    tile_catalog: dict[str, Tensor]  # CATALOG_KEYS → (Ht, Wt, ...)
    shard_id: int
    index_in_shard: int


class _ShardRecord(TypedDict):
    id: int
    file: str  # relative to the output directory
    split: str
    n_images: int
    bytes: int
    content_sha256: str
    rank: int
    host: str
    device: str
    seconds: float


class ShardRecord(_ShardRecord, total=False):
    """A manifest entry: one written shard (``offset``: its first row in the collective
    file; ``*_s``: seconds per phase, for shards made by this run)."""

    offset: int
    sample_s: float
    render_s: float
    write_s: float


class ShardFailure(TypedDict):
    """A shard that could not be made: its id, the rank that tried, the error."""

    id: int
    rank: int
    error: str


class ShardEdit(TypedDict):
    """An edit of a shard's data that ``hpc-bliss validate --refresh`` accepted: when, and its
    content_sha256 before and after."""

    id: int
    file: str
    utc: str
    old_sha256: str
    new_sha256: str


class _Manifest(TypedDict):
    schema_version: int
    config_hash: str
    config_yaml: str
    n_shards: int
    images_per_shard: int
    splits: dict[str, list[int]]  # split → shard ids
    images: dict[str, int]  # split → images
    shards: list[ShardRecord]
    missing: list[int]
    failures: list[ShardFailure]
    ranks: int


class Manifest(_Manifest, total=False):
    """``manifest.json`` of a generate.output_dir (``io``: "files" or "mpio"; ``edited``: the
    edits of shard data accepted by ``hpc-bliss validate --refresh``, oldest first)."""

    io: str
    edited: list[ShardEdit]
