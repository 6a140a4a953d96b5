"""The SDSS Science Archive layout of one field, and opening its FITS files.

A field is a directory ``RUN/CAMCOL/FIELD`` holding, per band b::

    frame-b-RRRRRR-C-FFFF.fits.bz2   calibrated frame (HDUs: nmgy, calibration, sky, astrometry)
    fpM-RRRRRR-bC-FFFF.fits          mask planes
    psField-RRRRRR-C-FFFF.fit        PSF, gain and dark variance of all bands

and ``photoField-RRRRRR-C.fits`` (one row per field of the camcol) in the directory or its
parent. The run, camcol and field numbers are read from the frame files' names.
"""

from __future__ import annotations

import bz2
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_bliss.errors import HpcBlissError

_FRAME = re.compile(r"^frame-([a-z])-(\d{6})-(\d)-(\d{4})\.fits(\.bz2)?$")


class SurveyError(HpcBlissError):
    """A survey file is missing, unreadable or not what was expected."""


@dataclass(frozen=True)
class FieldFiles:
    """The files of one SDSS field (``directory`` in the archive layout)."""

    directory: Path
    run: int
    camcol: int
    field: int

    @property
    def field_id(self) -> str:
        """``RUN-CAMCOL-FIELD``, e.g. ``2583-2-136``."""
        return f"{self.run}-{self.camcol}-{self.field}"

    def frame(self, band: str) -> Path:
        """The frame of ``band`` (``.fits.bz2``, else ``.fits``); SurveyError when neither is."""
        stem = f"frame-{band}-{self.run:06d}-{self.camcol}-{self.field:04d}.fits"
        for name in (stem + ".bz2", stem):
            if (self.directory / name).is_file():
                return self.directory / name
        raise SurveyError(
            f"{self.directory / (stem + '.bz2')}: no such file: field {self.field_id} has no "
            f"frame for band {band!r} (expected {stem}.bz2 or {stem})"
        )

    def fpm(self, band: str) -> Path:
        """The mask file of ``band``: ``.fits`` (as BLISS stores it), else the archive's own
        ``.fit.gz`` (or ``.fit``, ``.fits.gz``)."""
        stem = f"fpM-{self.run:06d}-{band}{self.camcol}-{self.field:04d}"
        for suffix in (".fits", ".fit.gz", ".fit", ".fits.gz"):
            if (self.directory / (stem + suffix)).is_file():
                return self.directory / (stem + suffix)
        return self._need(stem + ".fits")

    def psfield(self) -> Path:
        return self._need(f"psField-{self.run:06d}-{self.camcol}-{self.field:04d}.fit")

    def photofield(self) -> Path:
        name = f"photoField-{self.run:06d}-{self.camcol}.fits"
        for where in (self.directory, self.directory.parent):
            if (where / name).is_file():
                return where / name
        raise SurveyError(
            f"{self.directory.parent / name}: no such file (nor in {self.directory}): the "
            f"photoField of run {self.run} camcol {self.camcol}"
        )

    def _need(self, name: str) -> Path:
        path = self.directory / name
        if not path.is_file():
            raise SurveyError(f"{path}: no such file (field {self.field_id})")
        return path


def field_files(directory: str | Path) -> FieldFiles:
    """The field in ``directory``, named by its frame files; SurveyError when it has none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SurveyError(f"{directory}: not a directory (expected an SDSS field RUN/CAMCOL/FIELD)")
    ids = sorted({m.groups()[1:4] for p in directory.iterdir() if (m := _FRAME.match(p.name))})
    if not ids:
        raise SurveyError(
            f"{directory}: no frame-BAND-RUN-CAMCOL-FIELD.fits[.bz2] files: not an SDSS field"
        )
    if len(ids) > 1:
        raise SurveyError(f"{directory}: frames of several fields {ids}: expected one field")
    run, camcol, field = (int(x) for x in ids[0])
    return FieldFiles(directory, run, camcol, field)


@contextmanager
def open_fits(path: str | Path) -> Iterator[Any]:
    """``astropy.io.fits.open(path)`` (a ``.bz2`` is decompressed); a missing, truncated or
    corrupt file, met on opening or while reading within the block, is a one-line SurveyError
    naming it."""
    from astropy.io import fits

    path = Path(path)
    try:
        # a .bz2 is decompressed at once: astropy's own reader seeks back and forth in it,
        # decompressing the stream again each time (20× slower)
        source = io.BytesIO(bz2.decompress(path.read_bytes())) if path.suffix == ".bz2" else path
        with fits.open(source, memmap=False) as hdul:
            yield hdul
    except SurveyError:
        raise
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise SurveyError(
            f"{path}: cannot read it as FITS ({type(err).__name__}: {why}); a truncated or "
            "corrupt download? fetch it again from the SDSS archive"
        ) from err


def read_hdus(path: Path, hdus: tuple[int, ...]) -> list[Any]:
    """``(header, data)`` of each HDU index in ``hdus``, read fully (see :func:`open_fits`)."""
    with open_fits(path) as hdul:
        out = []
        for i in hdus:
            if i >= len(hdul):
                raise SurveyError(f"{path}: has {len(hdul)} HDUs, expected HDU {i}")
            hdu = hdul[i]
            out.append((hdu.header.copy(), None if hdu.data is None else hdu.data.copy()))
        return out
