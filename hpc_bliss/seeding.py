"""Random streams derived from (global seed, purpose, index), never from global RNG state.

A shard's content depends only on the config's seed and the shard id, so output is identical
however the work is split across ranks (as GalSim derives seeds from file/object numbers).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from the global seed and any number of keys (e.g. "shard", 42)."""
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(
    seed: int, *keys: int | str, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A torch.Generator on ``device`` seeded by :func:`derive_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *keys))
    return gen
