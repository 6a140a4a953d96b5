"""The psField PSF of a field against its own bright stars, per band: the brightest
unsaturated isolated stars fit with the PSF (hpc_bliss.survey.psf_check), and, for scale, with
the same PSF whose core is 30% wider.

    .venv/bin/python scripts/check_psf.py ../shared/data/sdss/2583/2/136 --n 20
"""

from __future__ import annotations

import argparse

import numpy as np

from hpc_bliss.survey.calibration import SDSS_ORDER, read_calibration
from hpc_bliss.survey.files import field_files
from hpc_bliss.survey.frame import read_frame
from hpc_bliss.survey.masks import read_fpm
from hpc_bliss.survey.psf_check import psf_star_residuals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("field", help="an SDSS field directory RUN/CAMCOL/FIELD")
    parser.add_argument("--n", type=int, default=20, help="stars per band")
    args = parser.parse_args()
    files = field_files(args.field)
    bands = list(SDSS_ORDER)
    cal = read_calibration(files, bands)
    print("band  stars  flux (nmgy)   chi_rms (median)  |res|/|star| median, max   30% wider core")
    for i, band in enumerate(bands):
        frame = read_frame(files.frame(band), band)
        mask = read_fpm(files.fpm(band), frame.shape)
        gain, dark = cal.gain[i], cal.dark_variance[i]
        stars = psf_star_residuals(frame, mask, cal.psf[i], gain, dark, n=args.n)
        wide = cal.psf[i].copy()
        wide[0] *= 1.3
        worse = psf_star_residuals(frame, mask, wide, gain, dark, n=args.n)
        flux = [s["flux"] for s in stars]
        rel = [s["rel_residual"] for s in stars]
        print(
            f"{band:>4}  {len(stars):>5}  {min(flux):6.0f}–{max(flux):<6.0f} "
            f"{np.median([s['chi_rms'] for s in stars]):10.2f}σ       "
            f"{np.median(rel):.3f}, {max(rel):.3f}            "
            f"{np.median([s['rel_residual'] for s in worse]):.3f}"
        )


if __name__ == "__main__":
    main()
