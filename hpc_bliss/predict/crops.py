"""A frame cut into overlapping crops of the training image size, and the tiles each owns.

Along each axis a frame of T tiles is covered by crops of n tiles. The encoder reports every
tile of a crop but its ``b`` border tiles on each side (as in evaluation), so a crop's interior
is n - 2b tiles. Crops start every n - 2b tiles (the last one flush with the frame's end), and
crop k **owns** the tiles [b + k(n - 2b), b + (k + 1)(n - 2b)) (the last one up to T - b): the
owned ranges partition [b, T - b), so every tile there comes from exactly one crop (no double
counting, no gap), and each lies in its crop's interior. The frame's own b border tiles on each
side are not reported, exactly as evaluation leaves out the border tiles of an image.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpc_bliss.errors import ConfigError


@dataclass(frozen=True)
class AxisLayout:
    """Crops along one axis, in tiles: ``starts[k]`` and the owned range ``owned[k]``."""

    starts: tuple[int, ...]
    owned: tuple[tuple[int, int], ...]


def axis_layout(n_frame: int, n_crop: int, border: int, what: str = "frame") -> AxisLayout:
    """The crops of ``n_crop`` tiles covering ``n_frame`` tiles with ``border`` tiles unreported."""
    step = n_crop - 2 * border
    if step < 1:
        raise ConfigError(f"crops of {n_crop} tiles leave no interior with {border} border tiles")
    if n_frame < n_crop:
        raise ConfigError(
            f"the {what} is {n_frame} tiles, smaller than one crop of {n_crop} tiles (the "
            "training image size): expected a field at least as large as a training image"
        )
    count = -(-(n_frame - 2 * border) // step)
    starts = tuple(min(k * step, n_frame - n_crop) for k in range(count))
    owned = tuple(
        (border + k * step, min(border + (k + 1) * step, n_frame - border)) for k in range(count)
    )
    return AxisLayout(starts, owned)


@dataclass(frozen=True)
class CropLayout:
    """The crops of a frame of ``frame_tiles`` (Ht, Wt) tiles, ``tile_slen`` px each."""

    tile_slen: int
    frame_tiles: tuple[int, int]
    crop_tiles: tuple[int, int]
    border: int
    rows: AxisLayout
    cols: AxisLayout

    @classmethod
    def make(
        cls, frame_px: tuple[int, int], crop_px: tuple[int, int], tile_slen: int, border: int
    ) -> CropLayout:
        """Layout of a frame of ``frame_px`` pixels (its last rows/columns that do not fill a
        tile are left out) for crops of ``crop_px`` pixels."""
        ft = (frame_px[0] // tile_slen, frame_px[1] // tile_slen)
        ct = (crop_px[0] // tile_slen, crop_px[1] // tile_slen)
        rows = axis_layout(ft[0], ct[0], border, "frame height")
        cols = axis_layout(ft[1], ct[1], border, "frame width")
        return cls(tile_slen, ft, ct, border, rows, cols)

    @property
    def shape(self) -> tuple[int, int]:
        """Crops per column and per row."""
        return len(self.rows.starts), len(self.cols.starts)

    @property
    def stitched_tiles(self) -> tuple[int, int]:
        """(Ht - 2b, Wt - 2b): the tiles reported, from tile (b, b) of the frame."""
        return self.frame_tiles[0] - 2 * self.border, self.frame_tiles[1] - 2 * self.border

    def pixels(self, i: int, j: int) -> tuple[slice, slice]:
        """The frame pixels of crop (i, j)."""
        ts, (ch, cw) = self.tile_slen, self.crop_tiles
        r0, c0 = self.rows.starts[i] * ts, self.cols.starts[j] * ts
        return slice(r0, r0 + ch * ts), slice(c0, c0 + cw * ts)

    def owned(self, i: int, j: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """Crop (i, j)'s owned tiles: as slices of its encoder output (border tiles already
        dropped) and as slices of the stitched grid (:attr:`stitched_tiles`)."""
        out = []
        for axis, k in ((self.rows, i), (self.cols, j)):
            lo, hi = axis.owned[k]
            first = axis.starts[k] + self.border  # frame tile of the output's index 0
            out.append((slice(lo - first, hi - first), slice(lo - self.border, hi - self.border)))
        (in_r, st_r), (in_c, st_c) = out
        return (in_r, in_c), (st_r, st_c)
