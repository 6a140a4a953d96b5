"""What types alone cannot say about a configuration: sizes that divide, ranges, per-band list
lengths. One function per section; each raises :class:`Invalid` naming the key, its value and
what was expected (:func:`hpc_bliss.config.load.load_config` adds where the value came from).
"""

from __future__ import annotations

import math
from typing import Any

from hpc_bliss.config.schema import PSF_KEYS


class Invalid(Exception):
    """A key's value breaks a rule (the loader turns it into a ConfigError)."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"key '{key}' = {value!r}: expected {expected}")
        self.key, self.value, self.expected = key, value, expected


def require(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise Invalid(key, value, expected)


def check_prior(p: Any) -> None:
    nb = len(p.bands)
    require(nb >= 1, "prior.bands", "at least one band", list(p.bands))
    require(p.tile_slen >= 1, "prior.tile_slen", "a positive pixel count", p.tile_slen)
    for key in ("image_height", "image_width"):
        size = getattr(p, key)
        ok = size >= 1 and size % p.tile_slen == 0
        require(ok, f"prior.{key}", f"a positive multiple of prior.tile_slen={p.tile_slen}", size)
    require(p.max_sources >= 1, "prior.max_sources", "an integer ≥ 1", p.max_sources)
    require(p.mean_sources >= 0, "prior.mean_sources", "≥ 0", p.mean_sources)
    require(0 <= p.prob_galaxy <= 1, "prior.prob_galaxy", "in [0, 1]", p.prob_galaxy)
    require(0 <= p.reference_band < nb, "prior.reference_band", f"in [0, {nb})", p.reference_band)
    for key in ("star_flux", "galaxy_flux"):
        law = getattr(p, key)
        require(law.min > 0, f"prior.{key}.min", "> 0 nanomaggies", law.min)
        require(law.max > law.min, f"prior.{key}.max", f"> prior.{key}.min={law.min}", law.max)
        require(law.alpha > 0, f"prior.{key}.alpha", "> 0", law.alpha)
    require(0 < p.galaxy_q_min <= 1, "prior.galaxy_q_min", "in (0, 1]", p.galaxy_q_min)
    require(p.galaxy_a_loc > 0, "prior.galaxy_a_loc", "> 0 arcsec", p.galaxy_a_loc)
    require(p.galaxy_a_scale >= 0, "prior.galaxy_a_scale", "≥ 0", p.galaxy_a_scale)
    conc = p.galaxy_a_concentration
    require(conc > 0, "prior.galaxy_a_concentration", "> 0", conc)
    require(p.galaxy_a_bd_ratio > 0, "prior.galaxy_a_bd_ratio", "> 0", p.galaxy_a_bd_ratio)
    lens = p.lensing
    require(0 < lens.max_abs < 1, "prior.lensing.max_abs", "in (0, 1)", lens.max_abs)
    for key in ("power_amplitude", "constant_shear_std", "constant_convergence_std"):
        require(getattr(lens, key) >= 0, f"prior.lensing.{key}", "≥ 0", getattr(lens, key))
    per_band = {
        "prior.star_color_mean": p.star_color_mean,
        "prior.star_color_std": p.star_color_std,
        "prior.galaxy_color_mean": p.galaxy_color_mean,
        "prior.galaxy_color_std": p.galaxy_color_std,
    }
    _check_per_band(per_band, list(p.bands))


def _check_per_band(lists: dict[str, Any], bands: list[str]) -> None:
    for key, values in lists.items():
        expected = f"{len(bands)} values, one per band {bands}"
        require(len(values) == len(bands), key, expected, values)


def check_render(r: Any, bands: list[str]) -> None:
    """The render section, whose per-band lists follow ``prior.bands``."""
    per_band = {"render.sky": r.sky, "render.nelec_per_nmgy": r.nelec_per_nmgy}
    per_band.update({f"render.psf.{k}": getattr(r.psf, k) for k in PSF_KEYS})
    _check_per_band(per_band, bands)
    for key in ("render.nelec_per_nmgy", "render.psf.sigma1", "render.psf.sigma2"):
        values = list(per_band[key])
        require(all(v > 0 for v in values), key, "all values > 0", values)
    require(all(s >= 0 for s in r.sky), "render.sky", "all values ≥ 0", list(r.sky))
    require(all(b > 2 for b in r.psf.beta), "render.psf.beta", "all > 2", list(r.psf.beta))
    require(r.psf.radius > 0, "render.psf.radius", "> 0 pixels", r.psf.radius)
    require(r.pixel_scale > 0, "render.pixel_scale", "> 0 arcsec/px", r.pixel_scale)
    require(r.pad >= 0, "render.pad", "≥ 0 pixels", r.pad)
    require(r.chunk_size >= 1, "render.chunk_size", "≥ 1", r.chunk_size)


def check_generate(g: Any) -> None:
    for key in ("n_shards", "images_per_shard", "batch_size"):
        require(getattr(g, key) >= 1, f"generate.{key}", "an integer ≥ 1", getattr(g, key))
    ok = len(g.split) == 3 and all(f >= 0 for f in g.split) and math.isclose(sum(g.split), 1.0)
    expected = "three fractions (train, val, test) ≥ 0 summing to 1"
    require(ok, "generate.split", expected, list(g.split))
    timeout = g.claim_timeout_minutes
    require(timeout > 0, "generate.claim_timeout_minutes", "> 0 minutes", timeout)
    require(g.cpu_threads >= 1, "generate.cpu_threads", "an integer ≥ 1", g.cpu_threads)


def check_evaluate(e: Any) -> None:
    require(e.border_tiles >= 0, "evaluate.border_tiles", "≥ 0", e.border_tiles)
    n = e.calibration_samples
    require(n >= 0, "evaluate.calibration_samples", "≥ 0 (0: no calibration section)", n)
    require(e.cpu_threads >= 1, "evaluate.cpu_threads", "≥ 1", e.cpu_threads)


def check_model(m: Any, p: Any, border_tiles: int) -> None:
    """The lensing head's cells tile the image and leave interior cells to score."""
    head = m.lensing
    tpc = head.tiles_per_cell
    require(tpc >= 1, "model.lensing.tiles_per_cell", "an integer ≥ 1", tpc)
    require(head.hidden >= 2, "model.lensing.hidden", "an integer ≥ 2", head.hidden)
    require(head.weight > 0, "model.lensing.weight", "> 0", head.weight)
    if not head.enabled:
        return
    grid = (p.image_height // p.tile_slen, p.image_width // p.tile_slen)
    expected = f"a divisor of the {grid[0]}×{grid[1]} tile grid (prior image size / tile_slen)"
    require(all(n % tpc == 0 for n in grid), "model.lensing.tiles_per_cell", expected, tpc)
    dropped = -(-border_tiles // tpc)  # cells holding a border tile are not scored
    expected = (
        f"a cell grid with cells left once the {dropped} per side holding one of the "
        f"evaluate.border_tiles={border_tiles} are dropped"
    )
    require(min(grid) // tpc > 2 * dropped, "model.lensing.tiles_per_cell", expected, tpc)


def check_predict(p: Any) -> None:
    """The predict section's counts."""
    require(p.n_samples >= 0, "predict.n_samples", "an integer ≥ 0", p.n_samples)
    require(p.batch_size >= 1, "predict.batch_size", "an integer ≥ 1", p.batch_size)
    require(p.cpu_threads >= 1, "predict.cpu_threads", "an integer ≥ 1", p.cpu_threads)


def check_all(cfg: Any) -> None:
    """Every section's rules, in the order of the file."""
    check_prior(cfg.prior)
    check_render(cfg.render, list(cfg.prior.bands))
    check_generate(cfg.generate)
    check_model(cfg.model, cfg.prior, cfg.evaluate.border_tiles)
    check_evaluate(cfg.evaluate)
    check_predict(cfg.predict)
