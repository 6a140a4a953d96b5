"""The config's ``${survey:KEY}`` values: numbers read from the SDSS field at ``survey.field``,
so that a config (``configs/sdss_m2.yaml``) simulates images that look like that field's.

Keys: ``bands`` (the field's bands, those with a frame, in u,g,r,i,z order), ``sky`` (the
psField sky per band, nmgy per pixel), ``nelec_per_nmgy`` (gain / photoField NMGYPERCOUNT),
and ``psf.sigma1`` … ``psf.p0`` (the psField PSF, :data:`PSF_COLUMNS`). Per-band values follow
``prior.bands``. Only psField and photoField are read (no frame is decompressed), once per
field and band list per process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from hpc_bliss.errors import ConfigError

PSF_NAMES = ("sigma1", "sigma2", "b", "sigmap", "beta", "p0")  #: = PSF_KEYS (no config import)
KEYS = ("bands", "sky", "nelec_per_nmgy", *(f"psf.{k}" for k in PSF_NAMES))


@lru_cache(maxsize=8)
def _calibration(directory: str, bands: tuple[str, ...]) -> Any:
    from hpc_bliss.survey.calibration import read_calibration
    from hpc_bliss.survey.files import field_files

    return read_calibration(field_files(directory), list(bands))


@lru_cache(maxsize=8)
def field_bands(directory: str) -> list[str]:
    """The SDSS bands that have a frame in the field ``directory``."""
    from hpc_bliss.survey.calibration import SDSS_ORDER
    from hpc_bliss.survey.files import SurveyError, field_files

    files = field_files(directory)
    found = []
    for band in SDSS_ORDER:
        try:
            files.frame(band)
        except SurveyError:
            continue
        found.append(band)
    return found


def survey_value(key: str, *, _root_: Any) -> Any:
    """The value of ``${survey:KEY}`` (an OmegaConf resolver; ``_root_`` is the config)."""
    from hpc_bliss.survey.files import SurveyError

    directory = str(_root_.survey.field or "")
    if key not in KEYS:
        raise ConfigError(f"${{survey:{key}}}: unknown key; expected one of {', '.join(KEYS)}")
    if not directory:
        raise ConfigError(f"${{survey:{key}}} needs survey.field, an SDSS field directory")
    path = str(Path(directory).resolve())
    try:
        if key == "bands":
            return field_bands(path)
        cal = _calibration(path, tuple(_root_.prior.bands))
    except SurveyError as err:
        raise ConfigError(f"survey.field={directory}: {err}") from err
    if key == "sky":
        return [round(float(v), 5) for v in cal.sky_nmgy]
    if key == "nelec_per_nmgy":
        return [round(float(v), 3) for v in cal.nelec_per_nmgy]
    column = PSF_NAMES.index(key.split(".", 1)[1])
    return [round(float(v), 7) for v in cal.psf[:, column]]


def register() -> None:
    """Make ``${survey:KEY}`` known to OmegaConf (done when :mod:`hpc_bliss.config` loads)."""
    from omegaconf import OmegaConf

    OmegaConf.register_resolver("survey", survey_value, replace=True)
