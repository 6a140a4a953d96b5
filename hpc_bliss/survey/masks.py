"""SDSS fpM mask planes as one integer image per band: bit k set where plane k covers a pixel.

Each plane is a binary table HDU (1, 2, …) of object masks; a mask's ``s`` column holds its
spans as big-endian int16 triplets (row, first column, last column), offset by the mask's
``row0``, ``col0``. The last HDU names the planes (``S_MASK_INTERP`` = 0, ``S_MASK_SATUR`` = 1,
…, ``S_MASK_CR`` = 9). The fpM grid is the frame's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpc_bliss.survey.files import SurveyError, open_fits

#: plane names in bit order, as fpM's last HDU lists them (without the S_MASK_ prefix)
PLANES = (
    "INTERP",
    "SATUR",
    "NOTCHECKED",
    "OBJECT",
    "BRIGHTOBJECT",
    "BINOBJECT",
    "CATOBJECT",
    "SUBTRACTED",
    "GHOST",
    "CR",
)
OUTSIDE_BIT = 10  #: set by alignment where a band has no data (outside its own frame)
FLAG_NAMES = (*PLANES, "OUTSIDE")  #: every bit of a mask image, in bit order


def read_fpm(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int32 mask image of the fpM file ``path`` for a frame of ``shape``."""
    out = np.zeros(shape, np.int32)
    with open_fits(path) as hdul:
        rows_hdr = int(hdul[0].header.get("MASKROWS", shape[0]))
        cols_hdr = int(hdul[0].header.get("MASKCOLS", shape[1]))
        if (rows_hdr, cols_hdr) != tuple(shape):
            raise SurveyError(f"{path}: a {rows_hdr}×{cols_hdr} mask for a {shape} frame")
        if len(hdul) < len(PLANES) + 1:
            raise SurveyError(f"{path}: {len(hdul)} HDUs, expected {len(PLANES) + 1} (planes)")
        for bit in range(len(PLANES)):
            table = hdul[bit + 1].data
            if table is not None and len(table):
                out |= _covered(table, shape).astype(np.int32) << bit
    return out


def _covered(table: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels of every span of one plane's masks (a difference array summed
    along rows, so no loop over spans)."""
    parts = []
    for mask in table:
        spans = np.frombuffer(np.asarray(mask["s"], np.uint8).tobytes(), ">i2").reshape(-1, 3)
        parts.append(
            spans.astype(np.int64) + [int(mask["row0"]), int(mask["col0"]), int(mask["col0"])]
        )
    spans = np.concatenate(parts)
    rows, c0, c1 = spans[:, 0], spans[:, 1].clip(0, shape[1]), (spans[:, 2] + 1).clip(0, shape[1])
    keep = (rows >= 0) & (rows < shape[0]) & (c1 > c0)
    diff = np.zeros((shape[0], shape[1] + 1), np.int32)
    np.add.at(diff, (rows[keep], c0[keep]), 1)
    np.add.at(diff, (rows[keep], c1[keep]), -1)
    return np.cumsum(diff, axis=1)[:, :-1] > 0
