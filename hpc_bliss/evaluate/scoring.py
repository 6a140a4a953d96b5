"""Scoring one batch of held-out images, and the report assembled from every process's counts.

Everything a process counts is a sum (:mod:`hpc_bliss.evaluate.metrics`, for the lensing head
:mod:`hpc_bliss.evaluate.lensing`, for the posterior's calibration
:mod:`hpc_bliss.evaluate.calibration`), so the counts of several processes merge by addition
and 2 processes give exactly the result of 1.

Detections are matched by two rules: position only (within ``evaluate.match_slack`` px), and
the literature's rule (``STRICT_SLACK`` px and ``STRICT_MAG_SLACK`` mag in r, both required).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import torch
from torch import Tensor

from hpc_bliss.catalog import FullCatalog, TileCatalog
from hpc_bliss.evaluate.baselines import sep_catalog, sep_tile_counts
from hpc_bliss.evaluate.calibration import CalibrationBatch, CalibrationCounts
from hpc_bliss.evaluate.lensing import LensingCounts, LensingScorer, score_lensing
from hpc_bliss.evaluate.matching import match_catalogs
from hpc_bliss.evaluate.metrics import DetectionCounts, TileCounts
from hpc_bliss.model.lensing import LensingDist

#: edges of the r-magnitude bins of precision and recall
MAG_BINS = (16.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0)
STRICT_SLACK, STRICT_MAG_SLACK = 0.5, 0.5  #: the literature's rule: px, and mag in r


class Headline(TypedDict):
    """One method's headline numbers (None where the method has no such number)."""

    n_sources_accuracy: float | None
    n_sources_within_1: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    classification_accuracy: float | None


class MostFrequent(TypedDict):
    """The baseline that predicts the most frequent true count in every tile."""

    count: int
    n_sources_accuracy: float | None


class Report(TypedDict):
    """report.json: the scores (encoder and SEP: their headline, detection details and
    confusion matrix) and how they were obtained."""

    encoder: dict[str, Any]
    sep: dict[str, Any]
    most_frequent: MostFrequent
    encoder_strict: dict[str, Any]  #: precision, recall, F1 and details, the literature's rule
    sep_strict: dict[str, Any]
    matching: dict[str, Any]  #: the two rules
    encoder_unfiltered_truth: dict[str, Any]
    n_tiles: int
    min_flux_threshold: float
    border_tiles: int
    test_shards: list[int]
    processes: int
    checkpoint: str
    seconds: float
    config: str
    lensing: NotRequired[dict[str, Any]]  #: with a lensing head: lensing.LensingCounts.metrics
    calibration: NotRequired[dict[str, Any]]  #: with samples: CalibrationCounts.metrics


class Example(TypedDict):
    """One held-out image with its true, predicted and SEP catalogs (for example.png), and with
    a lensing head its interior cells' true and predicted fields (for lensing_map.png)."""

    image: Tensor
    truth: FullCatalog
    pred: FullCatalog
    sep: FullCatalog
    offset: int
    lensing: dict[str, Tensor] | None


def interior(cat: FullCatalog, offset: float, height: int, width: int) -> FullCatalog:
    """Sources inside the interior box [offset, offset + height) × [offset, offset + width),
    in the box's coordinates."""
    plocs = cat["plocs"] - offset
    keep = cat.is_on_mask & (plocs[..., 0] >= 0) & (plocs[..., 0] < height)
    keep &= (plocs[..., 1] >= 0) & (plocs[..., 1] < width)
    order = torch.argsort(keep.int(), dim=1, descending=True, stable=True)
    data = {}
    for key, value in cat.data.items():
        if key == "n_sources":
            continue
        v = value if key != "plocs" else plocs
        idx = order.reshape(*order.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:])
        v = v.gather(1, idx)
        kept = keep.gather(1, order)
        data[key] = v * kept.reshape(*kept.shape, *([1] * (v.dim() - 2)))
    data["n_sources"] = keep.sum(1)
    return FullCatalog(height, width, data)


@dataclass
class BatchScorer:
    """How to score: border tiles left out, truth flux cut, SEP settings, matching slack."""

    border: int
    min_flux: float
    tile_slen: int
    nelec_per_nmgy: list[float]
    sep_threshold: float
    match_slack: float
    lensing: LensingScorer | None = None  #: score the lensing head (and its baselines)
    calibration_samples: int = 0  #: posterior samples per image for calibration (0: none)
    seed: int = 0  #: the config's seed: with each image's identity, it seeds its samples


class Accumulator:
    """Every count of one process; merged across processes by summation."""

    def __init__(self, max_count: int, n_bands: int, lensing_cells: int = 0) -> None:
        self.parts: dict[str, Any] = {
            "encoder_tiles": TileCounts(max_count),
            "encoder_tiles_unfiltered": TileCounts(max_count),
            "sep_tiles": TileCounts(max_count),
        }
        for key in ("encoder", "sep", "encoder_strict", "sep_strict"):
            self.parts[f"{key}_detection"] = DetectionCounts(list(MAG_BINS), n_bands)
        if lensing_cells:  # cells of lensing_cells × lensing_cells tiles
            self.parts["lensing"] = LensingCounts(lensing_cells)
        self.n_bands = n_bands
        self.example: Example | None = None

    def add_calibration(self, n_samples: int, max_count: int) -> None:
        """Also count the posterior's calibration, from ``n_samples`` samples of q per image
        whose catalogs hold at most ``max_count`` sources per tile."""
        self.parts["calibration"] = CalibrationCounts(n_samples, max_count, self.n_bands)

    def add(
        self,
        s: BatchScorer,
        images: Tensor,
        background: Tensor,
        truth_all: TileCatalog,
        pred: TileCatalog,
        q: LensingDist | None = None,
        calibration: CalibrationBatch | None = None,
    ) -> None:
        """Score one batch: the encoder's prediction ``pred`` (cropped to the interior, as
        Encoder.sample gives it) and SEP run here on the same images, against the truth; with
        ``s.lensing``, the lensing head's ``q`` (every cell) and its baselines too; with
        ``calibration``, the posterior samples and NLL of the batch."""
        b, ts = s.border, s.tile_slen
        truth = truth_all.filter_by_flux(s.min_flux) if s.min_flux > 0 else truth_all
        t_in = truth.symmetric_crop(b) if b else truth
        p = self.parts
        p["encoder_tiles"].update_catalogs(pred, truth, b)
        p["encoder_tiles_unfiltered"].update_catalogs(pred, truth_all, b)
        sep = sep_catalog(
            images.numpy(), background.numpy(), s.nelec_per_nmgy, thresh=s.sep_threshold
        )
        sep_n = sep_tile_counts(sep, ts)
        p["sep_tiles"].update(sep_n[:, b:-b, b:-b] if b else sep_n, t_in["n_sources"])
        t_full, p_full = t_in.to_full_catalog(), pred.to_full_catalog()
        s_full = interior(sep, b * ts, t_in.n_tiles_h * ts, t_in.n_tiles_w * ts)
        for key, found in (("encoder", p_full), ("sep", s_full)):
            loose = match_catalogs(t_full, found, s.match_slack)
            strict = match_catalogs(t_full, found, STRICT_SLACK, mag_slack=STRICT_MAG_SLACK)
            p[f"{key}_detection"].update(t_full, found, loose)
            p[f"{key}_strict_detection"].update(t_full, found, strict)
        if calibration is not None and "calibration" in p:
            p["calibration"].update(t_in, calibration)
        maps = None
        if s.lensing is not None and q is not None:
            maps = score_lensing(p["lensing"], s.lensing, images, truth_all, sep, q)
        if self.example is None:
            self.example = Example(
                image=images[0],
                truth=t_full.select([0]),
                pred=p_full.select([0]),
                sep=s_full.select([0]),
                offset=b * ts,
                lensing=maps,
            )

    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in self.parts.items()}

    @staticmethod
    def merged(dicts: list[dict]) -> dict:
        out = {}
        special = {"lensing": LensingCounts, "calibration": CalibrationCounts}
        for key in dicts[0]:
            cls: Any = DetectionCounts if key.endswith("detection") else TileCounts
            cls = special.get(key, cls)
            total = cls.from_dict(dicts[0][key])
            for d in dicts[1:]:
                total = total + cls.from_dict(d[key])
            out[key] = total
        return out


def headline(tiles: dict, det: dict) -> Headline:
    return Headline(
        n_sources_accuracy=tiles["n_sources_accuracy"],
        n_sources_within_1=tiles["n_sources_within_1"],
        precision=det.get("precision"),
        recall=det.get("recall"),
        f1=det.get("f1"),
        classification_accuracy=det.get("classification_accuracy"),
    )


def make_report(
    merged: dict,
    *,
    min_flux_threshold: float,
    border_tiles: int,
    test_shards: list[int],
    processes: int,
    checkpoint: str,
    seconds: float,
    config: str,
    match_slack: float | None = None,
) -> Report:
    """report.json from the merged counts: the scores (encoder, SEP, the most frequent count,
    the encoder against unfiltered truth; detection by both matching rules; with samples, the
    posterior's calibration) and how they were obtained."""
    enc_tiles, sep_tiles = merged["encoder_tiles"].metrics(), merged["sep_tiles"].metrics()
    enc_det, sep_det = merged["encoder_detection"].metrics(), merged["sep_detection"].metrics()
    mode, mode_rate = merged["encoder_tiles"].most_frequent()
    unfiltered = merged["encoder_tiles_unfiltered"].metrics()
    report = Report(
        encoder={
            **headline(enc_tiles, enc_det),
            "detection": enc_det,
            "confusion": enc_tiles["confusion"],
        },
        sep={
            **headline(sep_tiles, sep_det),
            "detection": sep_det,
            "confusion": sep_tiles["confusion"],
        },
        encoder_strict=_strict(merged["encoder_strict_detection"].metrics()),
        sep_strict=_strict(merged["sep_strict_detection"].metrics()),
        matching={
            "position": {"max_distance_px": match_slack},
            "strict": {"max_distance_px": STRICT_SLACK, "max_abs_dmag_r": STRICT_MAG_SLACK},
        },
        most_frequent=MostFrequent(count=mode, n_sources_accuracy=mode_rate),
        encoder_unfiltered_truth={k: v for k, v in unfiltered.items() if k != "confusion"},
        n_tiles=enc_tiles["n_tiles"],
        min_flux_threshold=min_flux_threshold,
        border_tiles=border_tiles,
        test_shards=test_shards,
        processes=processes,
        checkpoint=checkpoint,
        seconds=seconds,
        config=config,
    )
    if "lensing" in merged:
        report["lensing"] = merged["lensing"].metrics()
    if "calibration" in merged:
        report["calibration"] = merged["calibration"].metrics()
    return report


def _strict(det: dict) -> dict[str, Any]:
    return {
        "precision": det["precision"],
        "recall": det["recall"],
        "f1": det["f1"],
        "detection": det,
    }


def headline_lines(report: Report) -> list[str]:
    def fmt(x) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    e, s, m = report["encoder"], report["sep"], report["most_frequent"]
    lines = [
        f"[evaluate] {report['n_tiles']} interior tiles of {len(report['test_shards'])} test "
        f"shards (border {report['border_tiles']}, truth above "
        f"{report['min_flux_threshold']} nmgy)",
        f"[evaluate] n_sources accuracy: encoder {fmt(e['n_sources_accuracy'])}, SEP "
        f"{fmt(s['n_sources_accuracy'])}, always {m['count']} {fmt(m['n_sources_accuracy'])}",
        f"[evaluate] within ±1: encoder {fmt(e['n_sources_within_1'])}, SEP "
        f"{fmt(s['n_sources_within_1'])}",
        f"[evaluate] detection F1: encoder {fmt(e['f1'])}, SEP {fmt(s['f1'])}; literature rule "
        f"(0.5 px, 0.5 mag): encoder {fmt(report['encoder_strict']['f1'])}, SEP "
        f"{fmt(report['sep_strict']['f1'])}",
    ]
    if "calibration" in report:
        cal = report["calibration"]
        lines.append(
            f"[evaluate] calibration ({cal['n_samples']} samples): count ECE "
            f"{fmt(cal['reliability']['ece'])}, NLL per tile {fmt(cal['nll']['per_tile'])}"
        )
    if "lensing" in report:
        lens = report["lensing"]
        mse = {k: lens[k]["shear_mse"] for k in ("encoder", "zero", "oracle", "moments")}
        lines.append(
            f"[evaluate] lensing: shear MSE over {lens['n_cells']} cells: "
            + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3g}'}" for k, v in mse.items())
        )
    return lines
