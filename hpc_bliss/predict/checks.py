"""What predict refuses before any field is read: a checkpoint whose bands or tiles do not
match the config, and one trained for another survey config (unless ``predict.force``).

``hpc-bliss train`` records the training data's resolved config in every checkpoint under the key
:data:`PROVENANCE_KEY` (``{"config_yaml": ...}``); the survey part of that config
(:func:`survey_signature`: bands, image and tile size, pixel scale, PSF, sky, gain) must equal
the config's. A checkpoint without that record (older ones) cannot be checked: predict says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from hpc_bliss.config import PSF_KEYS, Config
from hpc_bliss.errors import ConfigError
from hpc_bliss.train.lit_module import PROVENANCE_KEY


def survey_signature(prior: Any, render: Any) -> dict[str, Any]:
    """What makes simulated images look like one survey field (prior and render sections)."""
    sig = {
        "bands": list(prior.bands),
        "image": [int(prior.image_height), int(prior.image_width)],
        "tile_slen": int(prior.tile_slen),
        "pixel_scale": float(render.pixel_scale),
        "sky": [round(float(v), 4) for v in render.sky],
        "nelec_per_nmgy": [round(float(v), 2) for v in render.nelec_per_nmgy],
    }
    for k in PSF_KEYS:
        sig[f"psf.{k}"] = [round(float(v), 4) for v in getattr(render.psf, k)]
    return sig


def check_checkpoint(cfg: Config, ckpt: dict, path: str, log: Callable[[str], None]) -> None:
    """Refuse (ConfigError naming ``path``) a checkpoint that cannot encode this config's
    images, or that was trained for another survey config unless ``predict.force``."""
    hp, p = ckpt["hyper_parameters"], cfg.prior
    if (int(hp["n_bands"]), int(hp["tile_slen"])) != (len(p.bands), p.tile_slen):
        raise ConfigError(
            f"predict.checkpoint={path}: trained on {hp['n_bands']} bands and "
            f"{hp['tile_slen']}-px tiles; the config has {len(p.bands)} bands {list(p.bands)} "
            f"and {p.tile_slen}-px tiles"
        )
    record = ckpt.get(PROVENANCE_KEY)
    if not record:
        log(f"[predict] {path} records no training config: its survey cannot be checked")
        return
    trained = OmegaConf.create(record["config_yaml"])
    theirs = survey_signature(trained.prior, trained.render)
    mine = survey_signature(cfg.prior, cfg.render)
    diff = [k for k in mine if mine[k] != theirs.get(k)]
    if not diff:
        return
    k = diff[0]
    what = (
        f"predict.checkpoint={path}: trained for another survey config ({len(diff)} values "
        f"differ, e.g. {k} = {theirs.get(k)} there, {mine[k]} here)"
    )
    if not cfg.predict.force:
        raise ConfigError(f"{what}; train on this config, or set predict.force=true")
    log(f"[predict] WARNING {what}; predicting anyway (predict.force=true)")
