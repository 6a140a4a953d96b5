"""The catalog of a real field checked against the image itself, without truth: the numbers
of the README's "Cataloguing M2" section.

    .venv/bin/python scripts/check_sdss_field.py configs/sdss_m2.yaml \\
        runs/sdss_m2/predict/2583-2-136/catalog.h5 --region 630 730 310 410

Prints, for the region (default: the literature's 100 × 100 px of M2, rows 630–729, columns
310–409) and the whole reported frame: the sources found and their r magnitudes, and the RMS
and 99th percentile of |residual| in σ in the reference band for four catalogs: the encoder's,
SEP's detections with PSF-fitted fluxes (region only), an empty catalog, and the truth on a
simulated image of this field (the config's prior, PSF, sky and gain). The catalog's sources
are rendered as point sources (the file keeps no galaxy shapes; sdss_m2.yaml's prior has no
galaxies). Then the encoder's
residual where the model is expected to fail: near saturated pixels, in the cluster's core,
on interpolated (bad) columns.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import load_config
from hpc_bliss.evaluate.baselines import sep_detect
from hpc_bliss.predict.catalog_io import read_catalog
from hpc_bliss.predict.residual import field_render_config, render_catalog, residual_sigma
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch
from hpc_bliss.simulate.render import Renderer
from hpc_bliss.survey.field import read_field

CORE = (925, 215)  #: the cluster's core, frame (row, col)
CORE_RADIUS = 150  #: px


def stats(res: np.ndarray) -> str:
    v = res[np.isfinite(res)].astype(np.float64)
    return f"RMS {np.sqrt(np.mean(v**2)):.3f}σ, p99(|r|) {np.percentile(np.abs(v), 99):.2f}σ"


def catalog_of(cols: dict, shape: tuple[int, int], keep: np.ndarray | None = None) -> FullCatalog:
    keep = np.ones(len(cols["row"]), bool) if keep is None else keep
    plocs = np.stack([cols["row"][keep], cols["col"][keep]], -1)
    return FullCatalog(
        shape[0],
        shape[1],
        {
            "n_sources": torch.tensor([int(keep.sum())]),
            "plocs": torch.from_numpy(plocs).float()[None],
            "star_fluxes": torch.from_numpy(cols["flux"][keep]).float()[None],
        },
    )


def sep_psf_model(field, render_cfg, region, ref: int, margin: int = 16) -> tuple[np.ndarray, int]:
    """SEP detections on the region (+ margin) of the reference band, each band's fluxes fitted
    by weighted least squares of the rendered unit-flux PSF at those positions; returns the
    model over the region (B, h, w) and the number of detections inside the region."""
    r0, r1, c0, c1 = region
    big = (slice(r0 - margin, r1 + margin), slice(c0 - margin, c1 + margin))
    image = field.image[:, big[0], big[1]]
    sigma = np.sqrt(field.variance(np.zeros_like(field.image))[:, big[0], big[1]])
    # crowded: a local background (8-px boxes) and fine deblending, else SEP merges the
    # cluster's stars into a few large objects (11 detections in the M2 region by default)
    det = sep_detect(
        image[ref],
        sigma[ref],
        thresh=3.0,
        subtract_background=True,
        bkg_box=8,
        deblend_cont=1e-5,
        minarea=3,
    )
    plocs = torch.from_numpy(det["plocs"]).float()
    n, (h, w) = len(plocs), image.shape[1:]
    renderer = Renderer(render_cfg, h, w)
    unit = []
    for lo in range(0, n, 64):
        k = min(64, n - lo)
        one = FullCatalog(
            h,
            w,
            {
                "n_sources": torch.ones(k, dtype=torch.int64),
                "plocs": plocs[lo : lo + k, None],
                "star_fluxes": torch.ones((k, 1, image.shape[0])),
            },
        )
        unit.append(renderer.noiseless(one).numpy())
    basis = np.concatenate(unit).reshape(n, image.shape[0], h * w)  # (S, B, P)
    model = np.zeros_like(image)
    for b in range(image.shape[0]):
        weight = 1 / sigma[b].ravel()
        a = (basis[:, b] * weight).T
        flux, *_ = np.linalg.lstsq(a, image[b].ravel() * weight, rcond=None)
        model[b] = (np.clip(flux, 0, None) @ basis[:, b]).reshape(h, w)
    inside = (
        (det["plocs"][:, 0] >= margin)
        & (det["plocs"][:, 0] < margin + r1 - r0)
        & (det["plocs"][:, 1] >= margin)
        & (det["plocs"][:, 1] < margin + c1 - c0)
    )
    return model[:, margin:-margin, margin:-margin], int(inside.sum())


def simulated_truth(cfg, ref: int) -> np.ndarray:
    """Residual (σ) of the truth catalog on simulated images of this field (interior 100²)."""
    renderer = make_renderer(cfg, "cpu")
    catalog, batch = simulate_batch(cfg, 8, make_generator(cfg.seed, "check"), renderer)
    model = renderer.noiseless(catalog)
    sky = renderer.sky[None, :, None, None]
    var = (model + sky) / renderer.nelec[None, :, None, None]
    res = ((batch.images - model) / var.sqrt())[:, ref, 6:-6, 6:-6]
    return res.numpy()


def region_numbers(cols, field, cfg, region, res_enc, ref) -> None:
    r0, r1, c0, c1 = region
    inside = (cols["row"] >= r0) & (cols["row"] < r1) & (cols["col"] >= c0) & (cols["col"] < c1)
    mag = cols["mag"][inside, ref]
    e_min = 1000 / field.nelec_per_nmgy()[ref, r0:r1, c0:c1].mean()
    bright = inside & (cols["flux"][:, ref] > e_min)
    print(
        f"region rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1}: {int(inside.sum())} sources, "
        f"{int(bright.sum())} brighter than 1,000 e- in r ({e_min:.2f} nmgy, r < "
        f"{22.5 - 2.5 * np.log10(e_min):.2f}); StarNet 1,013 (984-1,042), PCAT 1,672"
    )
    edges = np.arange(14, 26)
    hist, _ = np.histogram(mag, edges)
    print(
        "  r magnitudes: "
        + ", ".join(f"{a}-{a + 1}: {h}" for a, h in zip(edges, hist, strict=False))
    )
    render = field_render_config(cfg.render, field.psf)
    sl = (slice(r0, r1), slice(c0, c1))
    sep_model, n_sep = sep_psf_model(field, render, region, ref)
    sep_full = np.zeros_like(field.image)
    sep_full[:, sl[0], sl[1]] = sep_model
    print(f"  residual, encoder catalog:         {stats(res_enc[ref][sl])}")
    print(
        f"  residual, SEP ({n_sep} detections) + PSF-fit fluxes: "
        f"{stats(residual_sigma(field, sep_full)[ref][sl])}"
    )
    empty = residual_sigma(field, np.zeros_like(field.image))
    print(f"  residual, empty catalog:           {stats(empty[ref][sl])}")
    print(
        f"  residual, truth on simulated images of this field: {stats(simulated_truth(cfg, ref))}"
    )


def failures(field, res, keep, ref) -> None:
    """The encoder's residual where it is expected to fail, and elsewhere."""
    m = field.mask[ref]
    from scipy.ndimage import maximum_filter

    satur = maximum_filter((m >> 1) & 1, size=7) > 0
    interp = (m & 1) > 0
    rr, cc = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    core = (rr - CORE[0]) ** 2 + (cc - CORE[1]) ** 2 < CORE_RADIUS**2
    for name, where in (
        ("within 3 px of saturated pixels", satur),
        ("interpolated (bad) columns", interp),
        (f"core (< {CORE_RADIUS} px from {CORE})", core),
        ("everything else", ~(satur | interp | core)),
    ):
        sel = where & keep[ref]
        print(f"  {name}: {int(sel.sum())} px, {stats(res[ref][sel])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("catalog")
    parser.add_argument("--region", type=int, nargs=4, default=(630, 730, 310, 410))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    cols, attrs = read_catalog(args.catalog)
    field = read_field(attrs["field_dir"], attrs["bands"], attrs["reference_band"])
    ref = attrs["reference_band"]
    model = render_catalog(
        field_render_config(cfg.render, field.psf), field.shape, catalog_of(cols, field.shape)
    )
    res = residual_sigma(field, model)
    r0, r1, c0, c1 = attrs["reported_pixels"]
    keep = np.zeros(field.image.shape, bool)
    keep[:, r0:r1, c0:c1] = True
    keep &= (field.mask >> 10) & 1 == 0
    print(
        f"{attrs['field_id']}: {attrs['n_sources']} sources in the frame; whole reported frame "
        f"residual: {stats(res[ref][keep[ref]])}; empty catalog: "
        f"{stats((field.image / np.sqrt(field.variance(0 * field.image)))[ref][keep[ref]])}"
    )
    region_numbers(cols, field, cfg, tuple(args.region), res, ref)
    failures(field, res, keep, ref)


if __name__ == "__main__":
    main()
