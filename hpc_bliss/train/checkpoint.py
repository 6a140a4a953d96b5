"""Training checkpoints: the encoder restored from one (its saved hyperparameters go straight
to :class:`EncoderModule`'s constructor, so a new constructor argument needs no mapping here),
loaded with ``weights_only=True`` (no pickled code runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hpc_bliss.errors import ConfigError
from hpc_bliss.model import Encoder
from hpc_bliss.train.lit_module import EncoderModule

EXPECTED = "expected a .ckpt written by 'hpc-bliss train'"


def read_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", key: str = "evaluate.checkpoint"
) -> dict[str, Any]:
    """The checkpoint's dict; :class:`ConfigError` naming the config ``key`` and the file when
    it is missing or is not a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no such checkpoint")
    try:
        ckpt = torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # torch raises several classes for a file that is not a ckpt
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        why = type(err).__name__ + (f": {first}" if first else "")
        raise ConfigError(f"{key}={path}: torch.load cannot read it ({why}); {EXPECTED}") from err
    if not isinstance(ckpt, dict) or not {"hyper_parameters", "state_dict"} <= set(ckpt):
        raise ConfigError(
            f"{key}={path}: a torch file without hyper_parameters and state_dict; {EXPECTED}"
        )
    return ckpt


def load_encoder(
    path: str | Path, device: torch.device | str, key: str = "evaluate.checkpoint"
) -> tuple[Encoder, dict]:
    """The trained encoder of a checkpoint (in eval mode on ``device``) and the
    hyperparameters it was trained with."""
    return encoder_from(read_checkpoint(path, device, key), device)


def encoder_from(ckpt: dict[str, Any], device: torch.device | str) -> tuple[Encoder, dict]:
    """:func:`load_encoder` of a checkpoint dict already read by :func:`read_checkpoint`."""
    hp = dict(ckpt["hyper_parameters"])
    module = EncoderModule(**hp)
    module.load_state_dict(ckpt["state_dict"])
    return module.encoder.to(device).eval(), hp
