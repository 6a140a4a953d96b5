"""One field, from its files to its catalog: read, encode (:mod:`.work`), stitch, write the
catalog, render the catalog for the residual, and draw the PNGs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_bliss.catalog import FullCatalog, TileCatalog
from hpc_bliss.config import Config
from hpc_bliss.predict.catalog_io import sample_sources, sources, write_catalog
from hpc_bliss.predict.crops import CropLayout
from hpc_bliss.predict.figures import plot_overlay, plot_residual
from hpc_bliss.predict.residual import (
    field_render_config,
    render_catalog,
    residual_sigma,
    residual_stats,
)
from hpc_bliss.predict.work import Piece, stitch
from hpc_bliss.survey.field import SurveyField, read_field
from hpc_bliss.survey.masks import FLAG_NAMES, OUTSIDE_BIT

CATALOG = "catalog.h5"  #: a field's catalog, in ``<predict.output_dir>/<RUN-CAMCOL-FIELD>/``


def read_for(cfg: Config, directory: str | Path) -> SurveyField:
    """The field in ``directory`` in the config's bands, on the reference band's grid."""
    return read_field(directory, list(cfg.prior.bands), cfg.prior.reference_band)


def layout_for(cfg: Config, field: SurveyField, border: int) -> CropLayout:
    """Crops of the training image size over ``field``."""
    p = cfg.prior
    return CropLayout.make(field.shape, (p.image_height, p.image_width), p.tile_slen, border)


def frame_tensor(field: SurveyField, layout: CropLayout) -> torch.Tensor:
    """The image (B, Ht·ts, Wt·ts), trimmed to whole tiles, as a float32 tensor."""
    ts, (ht, wt) = layout.tile_slen, layout.frame_tiles
    return torch.from_numpy(np.ascontiguousarray(field.image[:, : ht * ts, : wt * ts]))


def in_frame(cat: TileCatalog, offset: float, shape: tuple[int, int]) -> FullCatalog:
    """The stitched catalog as one FullCatalog in frame pixels (for the renderer)."""
    full = cat.to_full_catalog()
    data = dict(full.data)
    data["plocs"] = data["plocs"] + offset
    return FullCatalog(shape[0], shape[1], data)


def covered(field: SurveyField, layout: CropLayout) -> np.ndarray:
    """(B, H, W) bool: pixels of the tiles the catalog reports, where the band has data."""
    ts, b, (ht, wt) = layout.tile_slen, layout.border, layout.frame_tiles
    keep = np.zeros(field.shape, bool)
    keep[b * ts : (ht - b) * ts, b * ts : (wt - b) * ts] = True
    return keep[None] & ((field.mask >> OUTSIDE_BIT) & 1 == 0)


def _residual(cfg: Config, field: SurveyField, layout: CropLayout, cat, out: Path, device):
    """Render ``cat``; the residual's RMS and p99 per band, and the two PNGs."""
    offset = layout.border * layout.tile_slen
    render = field_render_config(cfg.render, field.psf)
    model = render_catalog(render, field.shape, in_frame(cat, offset, field.shape), device=device)
    res = residual_sigma(field, model)
    stats = residual_stats(res, covered(field, layout))
    ref = field.reference_band
    band = field.bands[ref]
    rms = stats["rms"][ref]
    plot_residual(res[ref], out / "residual.png", f"{field.field_id} {band}: residual, RMS {rms}σ")
    return stats


def finish_field(
    cfg: Config,
    field: SurveyField,
    layout: CropLayout,
    pieces: dict[tuple[int, int], list[Piece]],
    attrs: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """Stitch ``pieces``, write the catalog (and, with ``predict.residual``, the residual's
    numbers and PNGs) to ``<output_dir>/<field id>/``; returns what was written."""
    t0 = time.perf_counter()
    out = Path(cfg.predict.output_dir) / field.field_id
    out.mkdir(parents=True, exist_ok=True)
    offset = layout.border * layout.tile_slen
    mode = stitch(layout, pieces, 0)
    columns = sources(mode, offset, field)
    samples = [
        sample_sources(stitch(layout, pieces, k), offset)
        for k in range(1, cfg.predict.n_samples + 1)
    ]
    ref = field.reference_band
    plot_overlay(
        field.image[ref],
        columns["row"],
        columns["col"],
        out / "overlay.png",
        f"{field.field_id} {field.bands[ref]}: {len(columns['row'])} sources",
    )
    stats = _residual(cfg, field, layout, mode, out, device) if cfg.predict.residual else {}
    attrs = {
        **attrs,
        "field_id": field.field_id,
        "field_dir": str(field.files.directory),
        "bands": list(field.bands),
        "reference_band": ref,
        "frame_shape": list(field.shape),
        "reported_pixels": [
            offset,
            layout.frame_tiles[0] * layout.tile_slen - offset,
            offset,
            layout.frame_tiles[1] * layout.tile_slen - offset,
        ],
        "crops": list(layout.shape),
        "band_shifts_px": [list(s) for s in field.shifts],
        "mask_bits": list(FLAG_NAMES),
        "residual_rms": stats.get("rms", []),
        "residual_p99": stats.get("p99", []),
    }
    write_catalog(out / CATALOG, columns, attrs, samples)
    return {"n_sources": len(columns["row"]), "finish_s": time.perf_counter() - t0, **stats}
