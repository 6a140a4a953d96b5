"""The SDSS reader on the committed cut of field 2583/2/136 (tests/data/sdss-cut, made by
scripts/make_sdss_cut.py from rows 190–317, columns 1450–1577 of the frames): the files' own
values, the sky, the noise model, the alignment of the bands, the masks and the psField PSF
against the stars of the frame."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_bliss.config import load_config
from hpc_bliss.errors import ConfigError
from hpc_bliss.survey.calibration import read_calibration
from hpc_bliss.survey.field import read_field
from hpc_bliss.survey.files import SurveyError, field_files
from hpc_bliss.survey.frame import read_frame
from hpc_bliss.survey.masks import read_fpm
from hpc_bliss.survey.psf_check import psf_star_residuals
from tests.conftest import CONFIGS, ROOT

CUT = ROOT / "tests" / "data" / "sdss-cut" / "2583" / "2" / "136"
BANDS = ["u", "g", "r", "i", "z"]


@pytest.fixture(scope="module")
def field():
    return read_field(CUT, BANDS)


def test_the_files_values_are_read(field):
    """psField / photoField values of this field (the data's README lists them)."""
    cal = field.calibration
    assert field.field_id == "2583-2-136" and field.shape == (128, 128)
    np.testing.assert_allclose(cal.psf[:, 0], [1.42, 1.15, 0.88, 0.89, 1.16], atol=0.005)
    np.testing.assert_allclose(cal.gain, [1.825, 3.855, 4.6, 5.195, 5.155])
    np.testing.assert_allclose(cal.dark_variance, [12.6025, 1.44, 1.0, 6.25, 1.0])
    np.testing.assert_allclose(
        cal.nmgy_per_count, [0.01187, 0.00447, 0.00547, 0.00656, 0.03857], rtol=1e-3
    )
    assert cal.psf[2, 5] < 1e-6  # r: no power-law wing
    np.testing.assert_allclose(cal.nelec_per_nmgy, cal.gain / cal.nmgy_per_count)


def test_header_values_and_wcs(field):
    """The frame's header is kept (band, units, calibration) and the WCS of the cut gives the
    sky position the whole frame's WCS gives to the same pixel."""
    r = field.headers[2]
    assert r["FILTER"].strip() == "r" and r["BUNIT"].strip() == "nanomaggy"
    assert (r["RUN"], r["CAMCOL"], r["FRAME"]) == (2583, 2, 136)
    assert (r["CRPIX1"], r["CRPIX2"]) == (1025 - 1450, 745 - 190)
    # the per-column calibration (flat field included) scatters about the header NMGY by ~2%
    np.testing.assert_allclose(field.calib[2].mean(), r["NMGY"], rtol=0.03)
    ra, dec = field.pixel_to_radec(np.array([10.5]), np.array([20.5]))  # frame (200, 1470)
    np.testing.assert_allclose([ra[0], dec[0]], [323.28295483, -0.68490757], atol=1e-7)


def test_sky_is_the_hdu2_grid_interpolated(field):
    frame = read_frame(field_files(CUT).frame("r"), "r")
    xi, yi = frame.xinterp[37], frame.yinterp[5]
    y0, x0 = int(np.floor(yi)), int(np.floor(xi))
    fy, fx = yi - y0, xi - x0
    g = frame.allsky
    manual = (
        g[y0, x0] * (1 - fy) * (1 - fx)
        + g[y0, x0 + 1] * (1 - fy) * fx
        + g[y0 + 1, x0] * fy * (1 - fx)
        + g[y0 + 1, x0 + 1] * fy * fx
    )
    np.testing.assert_allclose(field.sky[2, 5, 37], manual * frame.calib[37], rtol=1e-5)
    # the frame's sky agrees with psField's one number for the field within 5%
    np.testing.assert_allclose(np.median(field.sky[2]), field.calibration.sky_nmgy[2], rtol=0.05)


def test_noise_model(field):
    cal, c = field.calibration, field.calib[2, 3, 4]
    x, s = 2.0, field.sky[2, 3, 4]
    want = (x + s) * c / cal.gain[2] + cal.dark_variance[2] * c**2
    signal = np.zeros_like(field.image)
    signal[2, 3, 4] = x
    np.testing.assert_allclose(field.variance(signal)[2, 3, 4], want, rtol=1e-5)
    np.testing.assert_allclose(field.nelec_per_nmgy()[2, 3, 4], cal.gain[2] / c, rtol=1e-6)
    # the empty sky's pixels scatter as the model says (median absolute deviation → σ)
    sky_only = field.image[2][(field.image[2] < 0.1) & (field.mask[2] == 0)]
    sigma = np.sqrt(np.median(field.variance(np.zeros_like(field.image))[2]))
    assert 0.8 < 1.4826 * np.median(np.abs(sky_only - np.median(sky_only))) / sigma < 1.25


def _centroid(img: np.ndarray, r: int, c: int, half: int = 3) -> np.ndarray:
    box = np.clip(img[r - half : r + half + 1, c - half : c + half + 1], 0, None)
    rr, cc = np.mgrid[-half : half + 1, -half : half + 1]
    return np.array([(box * rr).sum(), (box * cc).sum()]) / box.sum()


def test_bands_are_aligned_by_the_wcs(field):
    """The bright star at frame (243, 1510) lies at the same place in every band once aligned:
    its centroids agree within 0.2 px (the frames are offset by up to 11 px before)."""
    r, c = 243 - 190, 1510 - 1450
    ref = _centroid(field.image[2], r, c)
    for b in range(5):
        assert np.abs(_centroid(field.image[b], r, c) - ref).max() < 0.2, BANDS[b]
    assert abs(field.shifts[1][0] - 11.0) < 0.5  # g is 11 rows off r before alignment
    assert max(field.affine_errors) < 0.01


def test_masks_are_read(field):
    """fpM spans become bits: this cut holds a bad column (INTERP, bit 0) at frame col 1523 in
    r, and nothing outside the frame in r."""
    assert ((field.mask[2][:, 1523 - 1450] & 1) == 1).all()
    assert ((field.mask[2] >> 10) & 1).sum() == 0
    assert ((field.mask[1] >> 10) & 1).sum() > 0  # g: rows the cut does not hold


def test_psfield_psf_fits_the_bright_stars():
    """The psField PSF against the brightest clean isolated stars of the cut (r band): less
    than 15% of the star left over, a third of what a 30% wider core leaves."""
    files = field_files(CUT)
    cal = read_calibration(files, BANDS)
    frame = read_frame(files.frame("r"), "r")
    mask = read_fpm(files.fpm("r"), frame.shape)
    gain, dark = cal.gain[2], cal.dark_variance[2]
    good = psf_star_residuals(frame, mask, cal.psf[2], gain, dark, n=20)
    wrong = cal.psf[2].copy()
    wrong[0] *= 1.3
    bad = psf_star_residuals(frame, mask, wrong, gain, dark, n=20)
    assert len(good) >= 1
    rel = np.median([s["rel_residual"] for s in good])
    assert rel < 0.15 and rel < np.median([s["rel_residual"] for s in bad]) / 3


def test_a_missing_band_file_is_named(tmp_path):
    field_dir = tmp_path / "136"
    shutil.copytree(CUT, field_dir)
    shutil.copy(CUT.parent / "photoField-002583-2.fits", tmp_path)
    (field_dir / "frame-i-002583-2-0136.fits.bz2").unlink()
    with pytest.raises(SurveyError) as err:
        read_field(field_dir, BANDS)
    assert "frame-i-002583-2-0136.fits.bz2: no such file" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_truncated_bz2_is_named(tmp_path):
    field_dir = tmp_path / "136"
    shutil.copytree(CUT, field_dir)
    shutil.copy(CUT.parent / "photoField-002583-2.fits", tmp_path)
    frame = field_dir / "frame-g-002583-2-0136.fits.bz2"
    frame.write_bytes(frame.read_bytes()[:5000])
    with pytest.raises(SurveyError) as err:
        read_field(field_dir, BANDS)
    assert str(frame) in str(err.value) and "truncated" in str(err.value)
    assert "\n" not in str(err.value)


def test_not_a_field(tmp_path):
    with pytest.raises(SurveyError, match="not an SDSS field"):
        field_files(tmp_path)


def test_the_survey_config_takes_the_fields_values():
    cfg = load_config(CONFIGS / "sdss_m2.yaml", [f"survey.field={CUT}"])
    cal = read_calibration(field_files(CUT), BANDS)
    assert list(cfg.prior.bands) == BANDS
    np.testing.assert_allclose(cfg.render.psf.sigma1, cal.psf[:, 0], rtol=1e-6)
    np.testing.assert_allclose(cfg.render.psf.p0, cal.psf[:, 5], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(cfg.render.sky, cal.sky_nmgy, rtol=1e-4)
    np.testing.assert_allclose(cfg.render.nelec_per_nmgy, cal.nelec_per_nmgy, rtol=1e-4)
    assert cfg.prior.mean_sources == 0.48 and cfg.prior.star_flux.alpha == 0.5  # M2's prior


def test_the_survey_config_needs_a_field(tmp_path):
    with pytest.raises(ConfigError, match="survey.field"):
        load_config(CONFIGS / "sdss_m2.yaml", ["survey.field="])
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_config(CONFIGS / "sdss_m2.yaml", [f"survey.field={tmp_path}"])


def test_the_default_field_is_the_shared_one():
    """configs/sdss_m2.yaml points at ../shared/data/sdss/2583/2/136 (relative to the root)."""
    cfg_text = (CONFIGS / "sdss_m2.yaml").read_text()
    assert "field: ../shared/data/sdss/2583/2/136" in cfg_text
    assert Path(CUT).is_dir()


SHARED = ROOT.parent / "shared" / "data" / "sdss" / "2583" / "2" / "136"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the whole field is not at {SHARED}")
def test_the_cut_is_what_the_script_makes_of_the_field(tmp_path, field):
    """scripts/make_sdss_cut.py remakes the committed cut from the whole field, and the reader
    gives the cut the whole frame's numbers there (r: the same pixels, masks, sky, WCS)."""
    script = ROOT / "scripts" / "make_sdss_cut.py"
    subprocess.run(
        [sys.executable, str(script), str(SHARED), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    again = read_field(tmp_path / "2583" / "2" / "136", BANDS)
    for key in ("image", "sky", "calib", "mask"):
        assert np.array_equal(getattr(again, key), getattr(field, key)), key
    whole = read_field(SHARED, BANDS)
    box = (slice(190, 318), slice(1450, 1578))
    assert np.array_equal(field.image[2], whole.image[2][box])
    assert np.array_equal(field.mask[2], whole.mask[2][box])
    np.testing.assert_allclose(field.sky, whole.sky[:, box[0], box[1]], rtol=1e-3)
