"""The `evaluate` stage: the encoder (posterior mode), SEP and "always the most frequent count"
on the test split's shards, interior tiles only, written as report.json / report.md / PNGs.

Ranks (mpirun/srun) split the test shards; every number is a sum of counts, gathered and added
on rank 0, so 2 processes give exactly the result of 1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import Config, to_yaml
from hpc_bliss.errors import ConfigError
from hpc_bliss.evaluate.baselines import sep_catalog, sep_tile_counts
from hpc_bliss.evaluate.matching import match_catalogs
from hpc_bliss.evaluate.metrics import DetectionCounts, TileCounts
from hpc_bliss.io.reader import ShardDataset
from hpc_bliss.model import Encoder
from hpc_bliss.parallel.env import ProcessEnv, detect, pick_device, single_process_note

MAG_BINS = [16.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0]


def load_encoder(path: str | Path, device: torch.device) -> tuple[Encoder, dict]:
    """The encoder of a training checkpoint, loaded with ``weights_only=True``; a file that is
    not one gives a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"evaluate.checkpoint={path}: no such checkpoint")
    expected = "expected a .ckpt written by 'hpc-bliss train'"
    try:
        ckpt = torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # torch raises several classes for a file that is not a ckpt
        why = type(err).__name__ + (
            ": " + str(err).strip().splitlines()[0][:160] if str(err) else ""
        )
        raise ConfigError(
            f"evaluate.checkpoint={path}: torch.load cannot read it ({why}); {expected}"
        ) from err
    if not isinstance(ckpt, dict) or not {"hyper_parameters", "state_dict"} <= set(ckpt):
        raise ConfigError(
            f"evaluate.checkpoint={path}: a torch file without hyper_parameters and "
            f"state_dict; {expected}"
        )
    hp = ckpt["hyper_parameters"]
    enc = Encoder(hp["n_bands"], hp["tile_slen"], hp["hidden"], hp["n_blocks"], hp["border_tiles"])
    state = {
        k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")
    }
    enc.load_state_dict(state)
    return enc.to(device).eval(), dict(hp)


def check_compatible(cfg: Config, data: ShardDataset, hp: dict, checkpoint: str | Path) -> None:
    """Refuse to score when the config's prior, the data and the checkpoint disagree on the
    bands, the tile size or the image size, naming both sides."""

    def shape(bands: list, tile: int, h: int | None = None, w: int | None = None) -> str:
        size = f", {h}×{w} px images" if h is not None else ""
        return f"{len(bands)} bands {list(bands)}, {tile}-px tiles{size}"

    p = cfg.prior
    prior = OmegaConf.create(data.config_yaml).prior
    mine = shape(list(p.bands), p.tile_slen, p.image_height, p.image_width)
    theirs = shape(list(prior.bands), prior.tile_slen, prior.image_height, prior.image_width)
    if mine != theirs:
        raise ConfigError(
            f"evaluate: the config's prior ({mine}) does not match the data in "
            f"{data.data_dir} ({theirs}); evaluate with the config the data was generated with"
        )
    if (hp["n_bands"], hp["tile_slen"]) != (len(prior.bands), prior.tile_slen):
        raise ConfigError(
            f"evaluate: checkpoint {checkpoint} was trained on {hp['n_bands']} bands and "
            f"{hp['tile_slen']}-px tiles; the data in {data.data_dir} has {theirs}"
        )


def default_checkpoint(cfg: Config) -> Path:
    """``train.output_dir``'s best checkpoint (its last one if there is no best)."""
    folder = Path(cfg.train.output_dir) / "checkpoints"
    best = folder / "best.ckpt"
    return best if best.exists() else folder / "last.ckpt"


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


class _Accumulator:
    """Every count of one process; merged across processes by summation."""

    def __init__(self, max_count: int, n_bands: int) -> None:
        self.parts = {
            "encoder_tiles": TileCounts(max_count),
            "encoder_tiles_unfiltered": TileCounts(max_count),
            "sep_tiles": TileCounts(max_count),
            "encoder_detection": DetectionCounts(MAG_BINS, n_bands),
            "sep_detection": DetectionCounts(MAG_BINS, n_bands),
        }

    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in self.parts.items()}

    @staticmethod
    def merged(dicts: list[dict]) -> dict:
        out = {}
        for key in dicts[0]:
            cls = TileCounts if key.endswith(("tiles", "unfiltered")) else DetectionCounts
            total = cls.from_dict(dicts[0][key])
            for d in dicts[1:]:
                total = total + cls.from_dict(d[key])
            out[key] = total
        return out


def evaluate(
    cfg: Config,
    env: ProcessEnv | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Evaluate ``evaluate.checkpoint`` on ``evaluate.data_dir``'s test split; rank 0 writes the
    report to ``evaluate.output_dir`` and returns it (other ranks return None)."""
    from hpc_bliss.evaluate.report import write_report

    env = env or detect()
    if env.comm is None:
        log(f"[evaluate] {single_process_note()}")
    e = cfg.evaluate
    device = pick_device(cfg.generate.device, env)
    checkpoint = e.checkpoint or default_checkpoint(cfg)
    encoder, hp = load_encoder(checkpoint, device)
    data = ShardDataset(e.data_dir, "test")
    check_compatible(cfg, data, hp, checkpoint)
    min_flux = float(hp.get("min_flux_threshold", cfg.train.min_flux_threshold))
    border = int(e.border_tiles)
    ts = data.tile_slen
    nelec = list(cfg.render.nelec_per_nmgy)
    mine = list(range(env.rank, len(data.shard_ids), env.world))
    acc = _Accumulator(max_count=cfg.prior.max_sources, n_bands=len(data.bands))
    sample = None
    t0 = time.perf_counter()
    for k in mine:
        rows = list(range(data.starts[k], data.starts[k + 1]))
        for lo in range(0, len(rows), 32):
            idx = rows[lo : lo + 32]
            items = [data[i] for i in idx]
            images = torch.stack([it["images"] for it in items])
            background = torch.stack([it["background"] for it in items])
            truth_all = data.to_tile_catalog(items)
            truth = truth_all.filter_by_flux(min_flux) if min_flux > 0 else truth_all
            with torch.no_grad():
                pred = encoder.sample(images.to(device), use_mode=True).to("cpu")
            t_in = truth.symmetric_crop(border) if border else truth
            t_all = truth_all.symmetric_crop(border) if border else truth_all
            p = acc.parts
            p["encoder_tiles"].update(pred["n_sources"], t_in["n_sources"])
            p["encoder_tiles_unfiltered"].update(pred["n_sources"], t_all["n_sources"])
            # SEP on the same images: counts per tile and detections in the interior
            sep = sep_catalog(images.numpy(), background.numpy(), nelec, thresh=e.sep_threshold)
            sep_n = sep_tile_counts(sep, ts)
            if border:
                sep_n = sep_n[:, border:-border, border:-border]
            p["sep_tiles"].update(sep_n, t_in["n_sources"])
            t_full, p_full = t_in.to_full_catalog(), pred.to_full_catalog()
            hh, ww = t_in.n_tiles_h * ts, t_in.n_tiles_w * ts
            s_full = interior(sep, border * ts, hh, ww)
            slack = float(e.match_slack)
            p["encoder_detection"].update(t_full, p_full, match_catalogs(t_full, p_full, slack))
            p["sep_detection"].update(t_full, s_full, match_catalogs(t_full, s_full, slack))
            if sample is None:
                sample = {
                    "image": images[0],
                    "truth": t_full.select([0]),
                    "pred": p_full.select([0]),
                    "sep": s_full.select([0]),
                    "offset": border * ts,
                }
        tag = f"[evaluate rank {env.rank}/{env.world} {socket.gethostname()}]"
        log(f"{tag} shard {data.shard_ids[k]:06d} done")
    gathered = env.gather((acc.to_dict(), data.shard_ids, sample))
    if env.rank != 0:
        return None
    assert gathered is not None
    merged = _Accumulator.merged([g[0] for g in gathered])
    enc_tiles = merged["encoder_tiles"].metrics()
    sep_tiles = merged["sep_tiles"].metrics()
    enc_det = merged["encoder_detection"].metrics()
    sep_det = merged["sep_detection"].metrics()
    mode, mode_rate = merged["encoder_tiles"].most_frequent()
    report = {
        "encoder": {
            **_headline(enc_tiles, enc_det),
            "detection": enc_det,
            "confusion": enc_tiles["confusion"],
        },
        "sep": {
            **_headline(sep_tiles, sep_det),
            "detection": sep_det,
            "confusion": sep_tiles["confusion"],
        },
        "most_frequent": {"count": mode, "n_sources_accuracy": mode_rate},
        "encoder_unfiltered_truth": {
            k: v
            for k, v in merged["encoder_tiles_unfiltered"].metrics().items()
            if k != "confusion"
        },
        "min_flux_threshold": min_flux,
        "n_tiles": enc_tiles["n_tiles"],
        "border_tiles": border,
        "test_shards": sorted(data.shard_ids),
        "processes": len(gathered),
        "checkpoint": str(checkpoint),
        "seconds": round(time.perf_counter() - t0, 2),
        "config": to_yaml(cfg),
    }
    example = next(g[2] for g in gathered if g[2] is not None)
    paths = write_report(report, merged, example, Path(e.output_dir), list(data.bands))
    for line in headline_lines(report):
        log(line)
    log(f"[evaluate] report: {', '.join(str(p) for p in paths)}")
    return report


def _headline(tiles: dict, det: dict) -> dict:
    return {
        "n_sources_accuracy": tiles["n_sources_accuracy"],
        "n_sources_within_1": tiles["n_sources_within_1"],
        "precision": det.get("precision"),
        "recall": det.get("recall"),
        "f1": det.get("f1"),
        "classification_accuracy": det.get("classification_accuracy"),
    }


def headline_lines(report: dict) -> list[str]:
    def fmt(x) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    e, s, m = report["encoder"], report["sep"], report["most_frequent"]
    return [
        f"[evaluate] {report['n_tiles']} interior tiles of {len(report['test_shards'])} test "
        f"shards (border {report['border_tiles']}, truth above "
        f"{report['min_flux_threshold']} nmgy)",
        f"[evaluate] n_sources accuracy: encoder {fmt(e['n_sources_accuracy'])}, SEP "
        f"{fmt(s['n_sources_accuracy'])}, always {m['count']} {fmt(m['n_sources_accuracy'])}",
        f"[evaluate] within ±1: encoder {fmt(e['n_sources_within_1'])}, SEP "
        f"{fmt(s['n_sources_within_1'])}",
        f"[evaluate] detection F1: encoder {fmt(e['f1'])}, SEP {fmt(s['f1'])}",
    ]
