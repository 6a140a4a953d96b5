"""Encoding a field's crops and stitching them into one catalog of the whole frame.

Work is split by blocks of whole rows of crops (:func:`row_blocks`: as many rows as fill a
batch of ``batch_size`` crops, at least one); a rank encodes its blocks (:func:`encode_rows`)
``batch_size`` crops at a time, so a batch holds the same crops whatever the number of ranks
(the output does not depend on how the work was split). Each crop keeps only the
tiles it owns (:mod:`.crops`); :func:`stitch` puts them together.

With the checkerboard tiling (``model.tiling``), each crop is inferred colour by colour on its
own, colours counted from the crop's first tile: a tile's history (the earlier colours' sources
it is conditioned on) comes from its own crop. Away from the seams between crops' owned tiles,
that history is what the stitched catalog reports around the tile. A tile next to a seam,
though, is conditioned on its neighbours across the seam *as its own crop inferred them* (from
the crop's border), not as the crop that owns them reports them: the two sides of a seam do not
see each other's reported sources, so a source straddling a seam may be reported twice or
missed, as with independent tiles. This approximation touches one tile on each side of each
seam. Exact conditioning would need every crop's colour k to follow every crop's colour k - 1
under one colouring of the frame, and the seams' sources to pass between ranks after each
colour; it is not done.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.model import Encoder
from hpc_bliss.predict.crops import CropLayout
from hpc_bliss.predict.posterior import posterior_mode, posterior_samples
from hpc_bliss.seeding import make_generator

Piece = dict[str, np.ndarray]  #: a crop's owned tiles: TileCatalog data as numpy arrays


def _owned(cat: TileCatalog, index: int, rows: slice, cols: slice) -> Piece:
    return {k: v[index : index + 1, rows, cols].cpu().numpy() for k, v in cat.data.items()}


def encode_rows(
    encoder: Encoder,
    image: Tensor,
    layout: CropLayout,
    rows: list[int],
    batch_size: int,
    n_samples: int = 0,
    seed: tuple = (0,),
    progress: Callable[[int], None] = lambda n: None,
) -> dict[tuple[int, int], list[Piece]]:
    """The owned tiles of every crop of crop rows ``rows`` of ``image`` (B, H, W) nmgy (on the
    encoder's device): ``{(i, j): [mode, sample 1, …, sample n_samples]}``. The crops are taken
    row by row and encoded ``batch_size`` at a time; the samples of a batch are drawn from
    ``make_generator(*seed, first crop's row, first crop's column)``; ``progress`` gets the
    number of crops done after each batch."""
    device = next(encoder.parameters()).device
    out: dict[tuple[int, int], list[Piece]] = {}
    crops = [(i, j) for i in rows for j in range(layout.shape[1])]
    for lo in range(0, len(crops), batch_size):
        batch = crops[lo : lo + batch_size]
        pixels = [layout.pixels(i, j) for i, j in batch]
        images = torch.stack([image[:, sr, sc] for sr, sc in pixels]).to(device)
        cats = [posterior_mode(encoder, images)]
        if n_samples:
            gen = make_generator(*seed, *batch[0], device=device)
            cats += posterior_samples(encoder, images, n_samples, gen)
        for k, (i, j) in enumerate(batch):
            (in_r, in_c), _ = layout.owned(i, j)
            out[(i, j)] = [_owned(c, k, in_r, in_c) for c in cats]
        progress(len(batch))
    return out


def row_blocks(layout: CropLayout, batch_size: int) -> list[list[int]]:
    """The crop rows in blocks of as many whole rows as fill a batch (at least one): the unit
    of work that ranks share, so that a batch holds the same crops whatever the ranks."""
    n_rows, n_cols = layout.shape
    per = max(1, batch_size // n_cols)
    return [list(range(i, min(i + per, n_rows))) for i in range(0, n_rows, per)]


def stitch(layout: CropLayout, pieces: dict[tuple[int, int], list[Piece]], which: int = 0):
    """One tile catalog (1, Ht - 2b, Wt - 2b, M, …) of the frame from every crop's piece
    ``which`` (0: the mode; k: sample k); raises ValueError if a crop is missing."""
    missing = [(i, j) for i in range(layout.shape[0]) for j in range(layout.shape[1])]
    missing = [c for c in missing if c not in pieces]
    if missing:
        raise ValueError(f"crops {missing[:3]}… of {layout.shape} have no result")
    first = pieces[(0, 0)][which]
    ht, wt = layout.stitched_tiles
    data = {k: np.zeros((1, ht, wt, *v.shape[3:]), v.dtype) for k, v in first.items()}
    for (i, j), parts in pieces.items():
        _, (st_r, st_c) = layout.owned(i, j)
        for k, v in parts[which].items():
            data[k][:, st_r, st_c] = v
    return TileCatalog(layout.tile_slen, {k: torch.from_numpy(v) for k, v in data.items()})
