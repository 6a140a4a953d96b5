"""Cut a small piece of an SDSS field into a field of its own, in the same archive layout, for
the tests (tests/data/sdss-cut/): every band's frame cropped (WCS reference pixel moved, the
calibration vector and the sky grid cut to match, so the reader gives the same numbers as on
the whole frame), the fpM masks clipped to the cut, psField's HDU 6 (HDUs 1–5, the KL PSF
basis, left empty) and photoField's row of this field.

    .venv/bin/python scripts/make_sdss_cut.py ../shared/data/sdss/2583/2/136 tests/data/sdss-cut \\
        --rows 190 318 --cols 1450 1578
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from hpc_bliss.survey.files import field_files, open_fits


def cut_frame(src: Path, dst: Path, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    """The frame's image, calibration, sky grid (cells needed only) and astrometry HDUs."""
    (r0, r1), (c0, c1) = rows, cols
    with open_fits(src) as hdul:
        h0 = hdul[0].header.copy()
        h0["CRPIX1"] -= c0
        h0["CRPIX2"] -= r0
        h0["HISTORY"] = f"make_sdss_cut.py: rows {r0}:{r1}, columns {c0}:{c1} of {src.name}"
        image = fits.PrimaryHDU(hdul[0].data[r0:r1, c0:c1], h0)
        calib = fits.ImageHDU(hdul[1].data[c0:c1], hdul[1].header)
        sky = hdul[2].data
        allsky = sky["ALLSKY"][0]
        allsky = allsky.reshape(allsky.shape[-2:])
        xi, yi = sky["XINTERP"][0][c0:c1], sky["YINTERP"][0][r0:r1]
        gy0 = max(int(math.floor(yi.min())) - 1, 0)
        gx0 = max(int(math.floor(xi.min())) - 1, 0)
        gy1 = min(int(math.ceil(yi.max())) + 2, allsky.shape[0])
        gx1 = min(int(math.ceil(xi.max())) + 2, allsky.shape[1])
        part = allsky[gy0:gy1, gx0:gx1]
        cols = [
            fits.Column(
                "ALLSKY",
                f"{part.size}E",
                dim=f"({part.shape[1]}, {part.shape[0]})",
                array=part[None],
            ),
            fits.Column("XINTERP", f"{xi.size}E", array=(xi - gx0)[None]),
            fits.Column("YINTERP", f"{yi.size}E", array=(yi - gy0)[None]),
        ]
        sky_hdu = fits.BinTableHDU.from_columns(cols)
        hdus = fits.HDUList([image, calib, sky_hdu, hdul[3].copy()])
        buf = io.BytesIO()
        hdus.writeto(buf)
    dst.write_bytes(bz2.compress(buf.getvalue(), 9))


def _gzip_to(hdus: fits.HDUList, dst: Path) -> None:
    """Write ``hdus`` gzipped (mostly empty FITS blocks: 100 kB become a few)."""
    buf = io.BytesIO()
    hdus.writeto(buf)
    dst.write_bytes(gzip.compress(buf.getvalue(), 9, mtime=0))


def cut_fpm(src: Path, dst: Path, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    """Each mask plane as one mask of the spans that cross the cut, in the cut's pixels."""
    (r0, r1), (c0, c1) = rows, cols
    with open_fits(src) as hdul:
        out = [fits.PrimaryHDU(header=hdul[0].header.copy())]
        out[0].header["MASKROWS"], out[0].header["MASKCOLS"] = r1 - r0, c1 - c0
        for hdu in hdul[1:-1]:
            spans = [np.zeros((0, 3), np.int64)]
            for mask in hdu.data if hdu.data is not None else []:
                s = np.frombuffer(np.asarray(mask["s"], np.uint8).tobytes(), ">i2")
                s = s.reshape(-1, 3).astype(np.int64)
                spans.append(s + [int(mask["row0"]), int(mask["col0"]), int(mask["col0"])])
            out.append(_plane(hdu, _runs(np.concatenate(spans), rows, cols)))
        out.append(hdul[-1].copy())
        _gzip_to(fits.HDUList(out), dst)


def _runs(spans: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """The pixels the ``spans`` (row, c0, c1) cover inside the cut, as the fewest spans (one
    per run of covered pixels of a row), in the cut's pixels."""
    (r0, r1), (c0, c1) = rows, cols
    covered = np.zeros((r1 - r0, c1 - c0 + 2), bool)
    inside = (spans[:, 0] >= r0) & (spans[:, 0] < r1) & (spans[:, 2] >= c0) & (spans[:, 1] < c1)
    for r, a, b in spans[inside]:
        covered[r - r0, max(a - c0, 0) + 1 : min(b - c0, c1 - c0 - 1) + 2] = True
    edges = np.diff(covered.astype(np.int8), axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return np.stack([starts[0], starts[1], ends[1] - 1], -1).astype(np.int64)


def _plane(hdu, spans: np.ndarray) -> fits.BinTableHDU:
    """A plane table of ``hdu``'s columns holding ``spans`` as one mask (none if empty)."""
    n = len(spans)
    blob = np.asarray(spans, ">i2").tobytes()
    arrays = {name: np.zeros(min(n, 1), np.int32) for name in hdu.columns.names if name != "s"}
    if n:
        arrays["nspan"][:] = n
        arrays["refcntr"][:] = 1
        arrays["rmax"][:], arrays["cmax"][:] = spans[:, 0].max(), spans[:, 2].max()
        arrays["npix"][:] = int((spans[:, 2] - spans[:, 1] + 1).sum())
    cols = [
        fits.Column(name, "1J", array=arrays[name]) for name in hdu.columns.names if name != "s"
    ]
    data = np.empty(min(n, 1), object)
    if n:
        data[0] = np.frombuffer(blob, np.uint8)
    cols.append(fits.Column("s", "PB()", array=data))
    return fits.BinTableHDU.from_columns(cols, header=hdu.header.copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("field", help="an SDSS field directory RUN/CAMCOL/FIELD")
    parser.add_argument("out", help="where the cut goes (RUN/CAMCOL/FIELD is added)")
    parser.add_argument("--rows", type=int, nargs=2, default=(190, 318))
    parser.add_argument("--cols", type=int, nargs=2, default=(1450, 1578))
    args = parser.parse_args()
    files = field_files(args.field)
    dest = Path(args.out) / str(files.run) / str(files.camcol) / str(files.field)
    dest.mkdir(parents=True, exist_ok=True)
    rows, cols = tuple(args.rows), tuple(args.cols)
    for band in "ugriz":
        cut_frame(files.frame(band), dest / files.frame(band).name, rows, cols)
        fpm = files.fpm(band)  # written as the archive serves it, fpM-*.fit.gz
        cut_fpm(fpm, dest / (fpm.name.split(".")[0] + ".fit.gz"), rows, cols)
    with open_fits(files.psfield()) as hdul:
        empty = [fits.BinTableHDU.from_columns([fits.Column("empty", "1J", array=[])])] * 5
        fits.HDUList([hdul[0].copy(), *empty, hdul[6].copy()]).writeto(
            dest / files.psfield().name, overwrite=True
        )
    with open_fits(files.photofield()) as hdul:
        table = hdul[1].data
        row = fits.BinTableHDU(table[table["FIELD"] == files.field], hdul[1].header)
        fits.HDUList([hdul[0].copy(), row]).writeto(
            dest.parent / files.photofield().name, overwrite=True
        )
    total = sum(p.stat().st_size for p in dest.parent.rglob("*") if p.is_file())
    print(f"{dest}: rows {rows}, columns {cols}; {total / 1e3:.0f} kB in all")


if __name__ == "__main__":
    main()
