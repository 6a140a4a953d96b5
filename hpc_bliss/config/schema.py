"""The configuration's schema: one dataclass per section, every key with its type, default,
units and meaning (``scripts/config_reference.py`` prints them as the README's table).

Sections read their own keys. ``prior`` and ``render`` describe the simulated data and are
shared by every stage; any other value that two sections need is defined once and reaches the
other by OmegaConf interpolation (``train.data_dir: ${generate.output_dir}``), so overriding
it in one place moves both. Fixed choices are ``Literal`` types: OmegaConf refuses any other
value and names the choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omegaconf import II

from hpc_bliss.survey import values as survey_values

survey_values.register()  # ${survey:KEY} in a config reads survey.field

#: the five SDSS bands, in wavelength order
SDSS_BANDS = ("u", "g", "r", "i", "z")
#: the per-band PSF parameters, in the order of a (B, 6) PSF tensor
PSF_KEYS = ("sigma1", "sigma2", "b", "sigmap", "beta", "p0")


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
    """The prior over tile catalogs (BLISS conventions: a tile's sources lie in it, locations
    are fractions of the tile side in [0, 1), fluxes are nanomaggies)."""

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
    units: Literal["nmgy", "nmgy_sky", "electrons"] = "nmgy"  #: sky-subtracted, with sky, or e-
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
    io: Literal["files", "mpio"] = "files"  #: a file per shard + dataset.h5, or one collective file
    compression: Literal["gzip", "none"] = "gzip"  #: shard tile catalogs: gzip level 1, or none
    claim_timeout_minutes: float = 60.0  #: a claim this old, whose job is gone, is taken over
    cpu_threads: int = 1  #: torch threads per writer on CPU; part of the data (see README)


@dataclass
class LensingHeadConfig:
    """The encoder's weak-lensing head: q(γ1, γ2, κ | image) per cell of detection tiles, one
    normal per component (learned mean and scale); its truth is the cell's mean tile field."""

    enabled: bool = False  #: add the head and its NLL to the loss (off: the encoder of before)
    tiles_per_cell: int = 8  #: cell side in detection tiles; must divide the tile grid
    hidden: int = 32  #: channels of the lensing head
    weight: float = 1.0  #: weight of the lensing NLL (mean over cells) added to the loss


#: ``model.tiling``: each tile inferred alone, or colour by colour (spatially autoregressive)
Tiling = Literal["independent", "checkerboard"]


@dataclass
class ModelConfig:
    """Encoder heads beyond detection (the trunk's size is ``train.hidden``, ``train.n_blocks``)
    and how tiles are inferred: each alone, or a checkerboard of colours, each colour given the
    sources reported for the colours before it (spatially autoregressive, arXiv 2510.03074)."""

    lensing: LensingHeadConfig = field(default_factory=LensingHeadConfig)
    tiling: Tiling = "independent"  #: or "checkerboard": colours given earlier colours' sources
    colors: Literal[2, 4] = 4  #: checkerboard colours: 4 (2×2 pattern) or 2 ((i + j) % 2)
    #: flux heads predict log flux relative to each tile's aperture sum (false: as before)
    aperture_flux: bool = True


@dataclass
class TrainConfig:
    """Encoder training."""

    data_dir: str = II("generate.output_dir")  #: shards (train and val splits) to train on
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
    on_bad_shard: Literal["fail", "skip"] = "fail"  #: a corrupt shard: stop, or leave it out
    border_tiles: int = II("evaluate.border_tiles")  #: tiles left out of validation accuracy


@dataclass
class EvaluateConfig:
    """Evaluation on held-out shards."""

    data_dir: str = II("generate.output_dir")  #: shards whose test split is scored
    checkpoint: str = "${train.output_dir}/checkpoints/best.ckpt"  #: scored (else last.ckpt)
    output_dir: str = "runs/evaluate"
    border_tiles: int = 1  #: tiles dropped on each side before scoring
    match_slack: float = 1.0  #: pixels: a prediction within this distance may match a truth
    sep_threshold: float = 1.5  #: SEP detection threshold, in units of the sky noise σ
    calibration_samples: int = 100  #: posterior samples per image for calibration (0: none)
    cpu_threads: int = 1  #: torch threads per rank on CPU (fixed: the same report for any ranks)
    device: str = II("generate.device")  #: "auto", "cpu" or "cuda", as generate.device


@dataclass
class SurveyConfig:
    """The real survey field a config is matched to: ``${survey:KEY}`` values in the config
    (bands, sky, gain, PSF) are read from it (:mod:`hpc_bliss.survey.values`)."""

    field: str = ""  #: an SDSS field directory, RUN/CAMCOL/FIELD ("": none)


@dataclass
class PredictConfig:
    """Cataloguing real survey fields with a trained encoder (``hpc-bliss predict``)."""

    checkpoint: str = "${train.output_dir}/checkpoints/best.ckpt"  #: the encoder (ckpt=PATH)
    fields: list[str] = field(default_factory=list)  #: SDSS field directories to catalog
    output_dir: str = "runs/predict"  #: a directory per field: catalog.h5 and PNGs
    n_samples: int = 0  #: posterior samples written beside the mode (0: the mode only)
    batch_size: int = 16  #: crops encoded at once
    device: str = II("generate.device")  #: "auto", "cpu" or "cuda", as generate.device
    cpu_threads: int = 1  #: torch threads per rank on CPU (fixed: the same output for any ranks)
    residual: bool = True  #: render the catalog: residual map (σ) and its PNGs
    force: bool = False  #: predict with a checkpoint trained for another survey config


@dataclass
class LaunchConfig:
    """Where and how jobs run; site values come from configs/site/*.yaml or the environment."""

    cluster: Literal["local", "slurm", "debug"] = "local"  #: where submit sends jobs
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
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    survey: SurveyConfig = field(default_factory=SurveyConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
