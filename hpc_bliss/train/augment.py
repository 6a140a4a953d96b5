"""Random 90° rotations and flips applied consistently to an image and its tile catalog.

Geometry (x = column, y = row): a flip reverses the columns (tile index, loc column), maps a
galaxy angle β to π − β and γ2 to −γ2; a 90° rotation (torch.rot90, rows towards columns)
maps pixel (r, c) to (W − c, r), β to β − π/2 (mod π) and (γ1, γ2) to (−γ1, −γ2).
Square images only (the tile grid must stay the same shape).
"""

from __future__ import annotations

import math

import torch

from hpc_bliss.io.schema import GALAXY_PARAMS

_BETA = GALAXY_PARAMS.index("beta_radians")  #: the galaxy angle's position in galaxy_params
_ONE_BELOW = 1.0 - 2.0**-24  # largest float32 below 1: a loc of 1 - 0 stays in its tile


def _flip(item: dict) -> dict:
    cat = dict(item["tile_catalog"])
    item = {**item, "images": item["images"].flip(-1), "tile_catalog": cat}
    for key, value in cat.items():
        cat[key] = value.flip(1)  # (Ht, Wt, ...): reverse the tile columns
    on = torch.arange(cat["locs"].shape[-2]) < cat["n_sources"][..., None]
    locs = cat["locs"].clone()
    locs[..., 1] = torch.where(on, (1 - locs[..., 1]).clamp(max=_ONE_BELOW), 0.0)
    cat["locs"] = locs
    params = cat["galaxy_params"].clone()
    is_gal = cat["source_type"][..., 0] == 1
    params[..., _BETA] = torch.where(
        is_gal, torch.remainder(math.pi - params[..., _BETA], math.pi), 0.0
    )
    cat["galaxy_params"] = params
    cat["shear"] = cat["shear"] * torch.tensor([1.0, -1.0])
    return item


def _rot90(item: dict) -> dict:
    cat = dict(item["tile_catalog"])
    item = {**item, "images": torch.rot90(item["images"], 1, (-2, -1)), "tile_catalog": cat}
    for key, value in cat.items():
        cat[key] = torch.rot90(value, 1, (0, 1))
    on = torch.arange(cat["locs"].shape[-2]) < cat["n_sources"][..., None]
    row, col = cat["locs"][..., 0], cat["locs"][..., 1]
    new = torch.stack([(1 - col).clamp(max=_ONE_BELOW), row], dim=-1)
    cat["locs"] = torch.where(on[..., None], new, torch.zeros_like(new))
    params = cat["galaxy_params"].clone()
    is_gal = cat["source_type"][..., 0] == 1
    beta = torch.remainder(params[..., _BETA] - math.pi / 2, math.pi)
    params[..., _BETA] = torch.where(is_gal, beta, 0.0)
    cat["galaxy_params"] = params
    cat["shear"] = -cat["shear"]
    return item


def augment(item: dict, generator: torch.Generator | None = None) -> dict:
    """One of the 8 symmetries of the square, uniformly at random, on one dataset item."""
    images = item["images"]
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"augmentation needs square images, got {tuple(images.shape[-2:])}")
    draw = int(torch.randint(0, 8, (1,), generator=generator).item())
    if draw >= 4:
        item = _flip(item)
    for _ in range(draw % 4):
        item = _rot90(item)
    return item
