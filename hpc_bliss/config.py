"""Typed configuration: one dataclass per section, merged with YAML files by OmegaConf.

An unknown key, a wrong type, or an inconsistent value fails at load time with a
:class:`~hpc_bliss.errors.ConfigError` naming the key, the file and what was expected.
Command-line overrides use OmegaConf's dotlist syntax (``prior.mean_sources=0.2``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_bliss.errors import ConfigError

SDSS_BANDS = ["u", "g", "r", "i", "z"]


@dataclass
class PowerLawFlux:
    """Truncated power law (Pareto) of reference-band fluxes: p(f) ∝ f^-(alpha+1) on [min, max]."""

    min: float = 0.63  #: lower truncation, nanomaggies (0.63 nmgy ≈ r 23.0 mag)
    max: float = 1.0e4  #: upper truncation, nanomaggies
    alpha: float = 0.5  #: power-law index (dimensionless, > 0)


@dataclass
class LensingConfig:
    """Weak-lensing fields per tile: a Gaussian random convergence field κ from a power
    spectrum, the shear (γ1, γ2) derived from it (Kaiser–Squires), plus a constant per image."""

    enabled: bool = False  #: draw shear and convergence (else both are zero)
    power_amplitude: float = 0.0  #: variance of κ from the random field (0: constant per image)
    power_index: float = 2.0  #: P(k) ∝ k^-index, k in cycles per tile
    constant_shear_std: float = 0.02  #: std of the per-image constant γ1, γ2 (dimensionless)
    constant_convergence_std: float = 0.02  #: std of the per-image constant κ (dimensionless)
    max_abs: float = 0.3  #: |γ| and |κ| are clipped to this (keeps 1-κ and μ finite)


@dataclass
class PriorConfig:
    """The prior over tile catalogs (BLISS conventions, DESIGN.md)."""

    image_height: int = 112  #: pixels
    image_width: int = 112  #: pixels
    tile_slen: int = 2  #: tile side, pixels; must divide image height and width
    bands: list[str] = field(default_factory=lambda: list(SDSS_BANDS))  #: band names
    reference_band: int = 2  #: index of the band fluxes and magnitudes refer to (r)
    max_sources: int = 5  #: maximum number of sources per tile
    mean_sources: float = 0.48  #: Poisson mean of sources per tile (then clipped at max)
    prob_galaxy: float = 0.0  #: probability a source is a galaxy
    star_flux: PowerLawFlux = field(default_factory=PowerLawFlux)
    #: star colours per band: mean and std of the magnitude relative to the reference band
    star_color_mean: list[float] = field(
        default_factory=lambda: [1.6, 0.55, 0.0, -0.15, -0.25]
    )  #: mag
    star_color_std: list[float] = field(default_factory=lambda: [0.6, 0.3, 0.0, 0.15, 0.2])  #: mag
    galaxy_flux: PowerLawFlux = field(default_factory=lambda: PowerLawFlux(1.0, 1.0e3, 0.5))
    galaxy_color_mean: list[float] = field(
        default_factory=lambda: [1.8, 0.7, 0.0, -0.4, -0.7]
    )  #: mag relative to the reference band, per band
    galaxy_color_std: list[float] = field(
        default_factory=lambda: [0.5, 0.2, 0.0, 0.15, 0.2]
    )  #: mag, per band
    #: semi-major half-light radius of the disk, arcsec: loc + scale * Gamma(concentration)
    galaxy_a_loc: float = 0.4  #: arcsec: a_d = loc + scale · Gamma(concentration)
    galaxy_a_scale: float = 0.8  #: arcsec
    galaxy_a_concentration: float = 1.5  #: Gamma shape (dimensionless)
    galaxy_a_bd_ratio: float = 2.0  #: a_d / a_b (disk larger than bulge)
    galaxy_q_min: float = 0.2  #: axis ratios b/a are uniform in [q_min, 1]
    lensing: LensingConfig = field(default_factory=LensingConfig)

    @property
    def n_tiles_h(self) -> int:
        return self.image_height // self.tile_slen

    @property
    def n_tiles_w(self) -> int:
        return self.image_width // self.tile_slen


@dataclass
class PsfConfig:
    """SDSS-style PSF per band, pixels: core Gaussian + second Gaussian + power-law wings.

    profile(r) = exp(-r²/2σ1²) + b·exp(-r²/2σ2²) + p0·(1 + r²/(β σp²))^(-β/2), truncated at
    ``radius`` and normalised to unit flux. The wing term is a Moffat with index β/2.
    Defaults are typical of SDSS psField fits at ~1.4 arcsec seeing.
    """

    sigma1: list[float] = field(
        default_factory=lambda: [1.45, 1.35, 1.25, 1.2, 1.25]
    )  #: core Gaussian σ, px, per band
    sigma2: list[float] = field(
        default_factory=lambda: [3.2, 3.0, 2.9, 2.8, 2.9]
    )  #: second Gaussian σ, px, per band
    b: list[float] = field(
        default_factory=lambda: [0.1, 0.1, 0.1, 0.1, 0.1]
    )  #: second Gaussian peak relative to the core, per band
    sigmap: list[float] = field(
        default_factory=lambda: [1.7, 1.6, 1.6, 1.5, 1.6]
    )  #: power-law width σp, px, per band
    beta: list[float] = field(
        default_factory=lambda: [3.2, 3.2, 3.2, 3.2, 3.2]
    )  #: power-law index β (> 2), per band
    p0: list[float] = field(
        default_factory=lambda: [0.05, 0.05, 0.05, 0.05, 0.05]
    )  #: power-law peak relative to the core, per band
    radius: float = 15.0  #: truncation radius, pixels


@dataclass
class RenderConfig:
    """How catalogs become images: PSF, sky, gain and noise (SDSS-typical defaults)."""

    pixel_scale: float = 0.396  #: arcsec per pixel
    psf: PsfConfig = field(default_factory=PsfConfig)
    sky: list[float] = field(default_factory=lambda: [0.25, 0.27, 0.69, 1.3, 4.3])  #: nmgy/px
    nelec_per_nmgy: list[float] = field(
        default_factory=lambda: [170.0, 730.0, 860.0, 640.0, 150.0]
    )  #: electrons per nanomaggy (gain × calibration), per band
    pad: int = 8  #: FFT padding, px: light may reach 2·pad beyond the image edge (> psf.radius/2)
    add_noise: bool = True  #: Poisson noise in electrons
    units: str = "nmgy"  #: "nmgy" (sky-subtracted), "nmgy_sky" (with sky) or "electrons"
    chunk_size: int = 64  #: images rendered at once (memory vs speed)
    galaxy_block: int = 64  #: galaxies transformed at once (memory vs speed)


@dataclass
class GenerateConfig:
    """Simulation into HDF5 shards."""

    output_dir: str = "runs/data"  #: where shards, manifest.json and dataset.h5 go
    n_shards: int = 4
    images_per_shard: int = 32
    batch_size: int = 32  #: images simulated at once
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  #: train/val/test
    device: str = "auto"  #: "auto" (cuda:local_rank if present, else cpu), "cpu" or "cuda"
    io: str = "files"  #: "files" (a file per shard + dataset.h5) or "mpio" (one collective file)
    compression: str = "gzip"  #: shard tile catalogs: "gzip" (level 1, standard HDF5) or "none"


@dataclass
class TrainConfig:
    """Encoder training."""

    data_dir: str = "runs/data"  #: a generate.output_dir (its train and val splits are used)
    output_dir: str = "runs/train"  #: checkpoints (best.ckpt, last.ckpt) and logs
    batch_size: int = 8  #: images per process per step
    max_epochs: int = 2
    max_steps: int = -1  #: stop after this many optimizer steps (-1: no limit)
    max_minutes: float = 0.0  #: stop after this wall time (0: no limit)
    learning_rate: float = 1.0e-3  #: Adam, cosine-annealed to 5% over the run
    min_flux_threshold: float = 0.0  #: nanomaggies, reference band; fainter truths are dropped
    hidden: int = 64  #: encoder channels
    n_blocks: int = 4  #: residual blocks at tile resolution
    augment: bool = True  #: random 90° rotations and flips of image and catalog
    accelerator: str = "auto"  #: "auto", "cpu" or "gpu"
    devices: int = 1  #: processes (GPUs) per node; under SLURM, = tasks per node
    num_nodes: int = 1
    num_workers: int = -1  #: DataLoader workers per process (-1: 2 where the cores allow)
    checkpoint_every_steps: int = 200  #: also write last.ckpt this often (preemption safety)
    record_items: bool = False  #: write items/rank-R.json: the images each rank read per epoch


@dataclass
class EvaluateConfig:
    """Evaluation on held-out shards."""

    data_dir: str = "runs/data"
    checkpoint: str = ""  #: empty: train.output_dir/checkpoints/best.ckpt (else last.ckpt)
    output_dir: str = "runs/evaluate"
    border_tiles: int = 1  #: tiles dropped on each side before scoring
    match_slack: float = 1.0  #: pixels: a prediction within this distance may match a truth
    sep_threshold: float = 1.5  #: SEP detection threshold, in units of the sky noise σ


@dataclass
class LaunchConfig:
    """Where and how jobs run; site values come from configs/site/*.yaml or the environment."""

    cluster: str = "local"  #: "local", "slurm" or "debug"
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    partition: str = ""
    account: str = ""
    time_minutes: int = 60


@dataclass
class Config:
    """The whole configuration."""

    name: str = "default"  #: a label for the run (printed, recorded in shards)
    seed: int = 0  #: global seed; every random stream derives from (seed, purpose, index)
    prior: PriorConfig = field(default_factory=PriorConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = (getattr(err, "msg", None) or str(err)).strip().splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (YAML) over the schema defaults, apply ``key=value`` overrides, validate.

    Returns plain :class:`Config` dataclass instances.
    """
    schema = OmegaConf.structured(Config)
    layers: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as err:  # YAML syntax errors come in several classes
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        try:
            layers.append(("command-line overrides", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line overrides: {_describe(err)}") from err
    cfg = schema
    for origin, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{origin}: {_describe(err)}") from err
    validate(cfg, origin=_origin_finder(path, layers, overrides or []))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj


def _origin_finder(
    path: Path | None, layers: list[tuple[str, Any]], overrides: list[str]
) -> Callable[[str, str], str]:
    """key → where its value came from: the command-line override that set it (or set a
    section holding it), else the YAML file, else the schema defaults."""

    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    def origin(key: str, expected: str = "") -> str:
        for item in reversed(overrides):
            name = item.split("=", 1)[0].lstrip("+~")
            # the key itself, or a key the expectation refers to (tile_slen for image_height)
            if related(name, key) or (name and f"{name}=" in expected):
                return f"command-line override {item!r}"
        if path is not None and OmegaConf.select(layers[0][1], key) is not None:
            return str(path)
        return f"{path}: the default" if path is not None else "defaults"

    return origin


class _Invalid(Exception):
    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected


def _require(cond: bool, origin: Any, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise _Invalid(key, value, expected)


def validate(cfg: Config | DictConfig, origin: str | Callable[[str, str], str] = "config") -> None:
    """Check values that types alone cannot: sizes that divide, ranges, per-band list lengths.
    ``origin`` names where a value came from: a string, or a function of (key, expectation)."""
    try:
        _validate(cfg, origin)
    except _Invalid as bad:
        where = origin(bad.key, bad.expected) if callable(origin) else origin
        raise ConfigError(
            f"{where}: key '{bad.key}' = {bad.value!r}: expected {bad.expected}"
        ) from None


def _validate(cfg: Config | DictConfig, origin: Any) -> None:
    p, r = cfg.prior, cfg.render
    nb = len(p.bands)
    _require(nb >= 1, origin, "prior.bands", "at least one band", list(p.bands))
    _require(p.tile_slen >= 1, origin, "prior.tile_slen", "a positive pixel count", p.tile_slen)
    for key in ("image_height", "image_width"):
        size = getattr(p, key)
        _require(
            size >= 1 and size % p.tile_slen == 0,
            origin,
            f"prior.{key}",
            f"a positive multiple of prior.tile_slen={p.tile_slen}",
            size,
        )
    _require(p.max_sources >= 1, origin, "prior.max_sources", "an integer ≥ 1", p.max_sources)
    _require(p.mean_sources >= 0, origin, "prior.mean_sources", "≥ 0", p.mean_sources)
    _require(0 <= p.prob_galaxy <= 1, origin, "prior.prob_galaxy", "in [0, 1]", p.prob_galaxy)
    _require(
        0 <= p.reference_band < nb,
        origin,
        "prior.reference_band",
        f"in [0, {nb})",
        p.reference_band,
    )
    for key in ("star_flux", "galaxy_flux"):
        law = getattr(p, key)
        _require(law.min > 0, origin, f"prior.{key}.min", "> 0 nanomaggies", law.min)
        _require(
            law.max > law.min, origin, f"prior.{key}.max", f"> prior.{key}.min={law.min}", law.max
        )
        _require(law.alpha > 0, origin, f"prior.{key}.alpha", "> 0", law.alpha)
    _require(0 < p.galaxy_q_min <= 1, origin, "prior.galaxy_q_min", "in (0, 1]", p.galaxy_q_min)
    _require(p.galaxy_a_loc > 0, origin, "prior.galaxy_a_loc", "> 0 arcsec", p.galaxy_a_loc)
    _require(p.galaxy_a_scale >= 0, origin, "prior.galaxy_a_scale", "≥ 0", p.galaxy_a_scale)
    _require(
        p.galaxy_a_concentration > 0,
        origin,
        "prior.galaxy_a_concentration",
        "> 0",
        p.galaxy_a_concentration,
    )
    _require(p.galaxy_a_bd_ratio > 0, origin, "prior.galaxy_a_bd_ratio", "> 0", p.galaxy_a_bd_ratio)
    lens = p.lensing
    _require(0 < lens.max_abs < 1, origin, "prior.lensing.max_abs", "in (0, 1)", lens.max_abs)
    for key in ("power_amplitude", "constant_shear_std", "constant_convergence_std"):
        _require(getattr(lens, key) >= 0, origin, f"prior.lensing.{key}", "≥ 0", getattr(lens, key))
    per_band = {
        "prior.star_color_mean": p.star_color_mean,
        "prior.star_color_std": p.star_color_std,
        "prior.galaxy_color_mean": p.galaxy_color_mean,
        "prior.galaxy_color_std": p.galaxy_color_std,
        "render.sky": r.sky,
        "render.nelec_per_nmgy": r.nelec_per_nmgy,
    }
    per_band.update({f"render.psf.{k}": getattr(r.psf, k) for k in PSF_KEYS})
    for key, values in per_band.items():
        _require(
            len(values) == nb, origin, key, f"{nb} values, one per band {list(p.bands)}", values
        )
    for key in ("render.nelec_per_nmgy", "render.psf.sigma1", "render.psf.sigma2"):
        values = per_band[key]
        _require(all(v > 0 for v in values), origin, key, "all values > 0", list(values))
    _require(all(s >= 0 for s in r.sky), origin, "render.sky", "all values ≥ 0", list(r.sky))
    _require(
        all(bt > 2 for bt in r.psf.beta), origin, "render.psf.beta", "all > 2", list(r.psf.beta)
    )
    _require(r.psf.radius > 0, origin, "render.psf.radius", "> 0 pixels", r.psf.radius)
    _require(r.pixel_scale > 0, origin, "render.pixel_scale", "> 0 arcsec/px", r.pixel_scale)
    _require(r.pad >= 0, origin, "render.pad", "≥ 0 pixels", r.pad)
    _require(r.chunk_size >= 1, origin, "render.chunk_size", "≥ 1", r.chunk_size)
    units = ("nmgy", "nmgy_sky", "electrons")
    _require(r.units in units, origin, "render.units", f"one of {units}", r.units)
    g = cfg.generate
    for key in ("n_shards", "images_per_shard", "batch_size"):
        value = getattr(g, key)
        _require(value >= 1, origin, f"generate.{key}", "an integer ≥ 1", value)
    _require(g.io in ("files", "mpio"), origin, "generate.io", "'files' or 'mpio'", g.io)
    _require(
        g.compression in ("gzip", "none"),
        origin,
        "generate.compression",
        "'gzip' or 'none'",
        g.compression,
    )
    _require(
        len(g.split) == 3 and all(f >= 0 for f in g.split) and math.isclose(sum(g.split), 1.0),
        origin,
        "generate.split",
        "three fractions (train, val, test) ≥ 0 summing to 1",
        list(g.split),
    )
    _require(
        cfg.evaluate.border_tiles >= 0,
        origin,
        "evaluate.border_tiles",
        "≥ 0",
        cfg.evaluate.border_tiles,
    )


PSF_KEYS = ("sigma1", "sigma2", "b", "sigmap", "beta", "p0")


def to_yaml(cfg: Config | DictConfig) -> str:
    """The resolved config as YAML (what shards record)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


#: the generate keys that, with seed, prior and render, determine simulated shards
DATA_GENERATE_KEYS = ("n_shards", "images_per_shard", "batch_size", "split")


def config_hash(cfg: Config | DictConfig) -> str:
    """SHA-256 (first 16 hex digits) of everything that determines simulated data: seed,
    prior, render and generate's n_shards, images_per_shard, batch_size and split."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    subset = {k: container[k] for k in ("seed", "prior", "render")}
    subset["generate"] = {k: container["generate"][k] for k in DATA_GENERATE_KEYS}
    text = OmegaConf.to_yaml(OmegaConf.create(subset))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
