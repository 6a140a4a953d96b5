"""The `evaluate` stage: the encoder (posterior mode), SEP and "always the most frequent count"
on the test split's shards, interior tiles only, written as report.json / report.md / PNGs;
with a lensing head, also its shear and convergence on the interior cells against the
baselines of :mod:`hpc_bliss.evaluate.lensing`; with ``evaluate.calibration_samples`` > 0, the
posterior's calibration from that many samples per image (:mod:`hpc_bliss.evaluate.calibration`,
each image's samples seeded by the config seed and its shard id and row).

Ranks (mpirun/srun) split the test shards; every number is a sum of counts, gathered and added
on rank 0, so 2 processes give exactly the result of 1. Each test shard is validated before it
is scored (every chunk's Fletcher-32 checksum, and content_sha256): a bad one stops every rank
with a one-line error naming it; no shard is ever left out of the score.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from hpc_bliss.config import Config, to_yaml
from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.evaluate.calibration import calibration_batch, catalog_slots
from hpc_bliss.evaluate.lensing import LensingScorer
from hpc_bliss.evaluate.scoring import (
    Accumulator,
    BatchScorer,
    Report,
    headline_lines,
    make_report,
)
from hpc_bliss.io.reader import ShardDataset
from hpc_bliss.io.shards import validate_shard
from hpc_bliss.parallel.env import (
    ProcessEnv,
    detect,
    pick_device,
    single_process_note,
    using_device,
)
from hpc_bliss.train.checkpoint import load_encoder

BATCH = 32  #: images scored at once


def checkpoint_path(configured: str, log: Callable[[str], None], stage: str = "evaluate") -> Path:
    """``<stage>.checkpoint``; where it is a best.ckpt that training never wrote (no
    validation ran), the last.ckpt beside it, saying so."""
    path = Path(configured)
    last = path.with_name("last.ckpt")
    if path.name == "best.ckpt" and not path.exists() and last.is_file():
        log(f"[{stage}] no {path}: using {last}")
        return last
    return path


def check_compatible(cfg: Config, data: ShardDataset, hp: dict, checkpoint: str | Path) -> None:
    """Refuse to score when the config's prior, the data and the checkpoint disagree on the
    bands, the tile size or the image size, naming both sides."""

    def shape(bands: list, tile: int, h: int, w: int) -> str:
        return f"{len(bands)} bands {list(bands)}, {tile}-px tiles, {h}×{w} px images"

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


def lensing_scorer(cfg: Config, data: ShardDataset, hp: dict) -> LensingScorer | None:
    """How to score the checkpoint's lensing head (None without one): its cells, less those
    holding one of the ``evaluate.border_tiles``; refused where the data's tiles (those of the
    config's prior, which :func:`check_compatible` checked) do not make whole cells or leave
    none inside."""
    from hpc_bliss.evaluate.shapes import psf_covariance  # renders a star: only needed here

    tpc = int(hp.get("lensing_tiles_per_cell", 0))
    if tpc <= 0:
        return None
    border = -(-int(cfg.evaluate.border_tiles) // tpc)
    h, w = cfg.prior.image_height // data.tile_slen, cfg.prior.image_width // data.tile_slen
    if h % tpc or w % tpc or min(h, w) // tpc <= 2 * border:
        raise ConfigError(
            f"evaluate: the checkpoint's lensing cells of {tpc}×{tpc} tiles do not tile the "
            f"{h}×{w} tiles of {data.data_dir} with cells left inside evaluate.border_tiles="
            f"{cfg.evaluate.border_tiles}"
        )
    return LensingScorer(tpc, border, psf_covariance(cfg.render))


def _score_shards(
    data: ShardDataset, mine: list[int], scorer: BatchScorer, encoder, device, acc, log, tag
) -> None:
    for k in mine:
        rows = list(range(data.starts[k], data.starts[k + 1]))
        for lo in range(0, len(rows), BATCH):
            items = [data[i] for i in rows[lo : lo + BATCH]]
            images = torch.stack([it["images"] for it in items])
            background = torch.stack([it["background"] for it in items])
            truth = data.to_tile_catalog(items)
            calibration = None
            with torch.no_grad():
                on_device = images.to(device)
                features = encoder(on_device)
                pred = encoder.sample_features(features, use_mode=True).to("cpu")
                q = encoder.lensing(features, on_device).to("cpu") if scorer.lensing else None
                if scorer.calibration_samples:
                    ids = [(data.shard_ids[k], r - data.starts[k]) for r in rows[lo : lo + BATCH]]
                    calibration = calibration_batch(
                        encoder,
                        features,
                        truth,
                        ids,
                        scorer.calibration_samples,
                        scorer.seed,
                        scorer.min_flux,
                    )
            acc.add(scorer, images, background, truth, pred, q, calibration)
        log(f"{tag} shard {data.shard_ids[k]:06d} done")


def _accumulator(
    cfg: Config, data: ShardDataset, scorer: BatchScorer, encoder, device
) -> Accumulator:
    """This rank's empty counts: with a lensing head its cells, with calibration samples the
    most sources per tile the encoder's catalogs hold."""
    lensing_cells = scorer.lensing.tiles_per_cell if scorer.lensing else 0
    acc = Accumulator(cfg.prior.max_sources, len(data.bands), lensing_cells)
    if scorer.calibration_samples:
        p = cfg.prior
        slots = catalog_slots(encoder, len(data.bands), p.image_height, p.image_width, device)
        acc.add_calibration(scorer.calibration_samples, slots)
    return acc


def _check_shard(data: ShardDataset, k: int) -> None:
    """Refuse a test shard that fails validation: every chunk's Fletcher-32 checksum and the
    data's content_sha256 (which also catches an edit, and damage in a shard written without
    checksums). Evaluation never leaves a shard out: a score over part of the test split is
    wrong without saying so."""
    problems = validate_shard(data.paths[k], data.config_hash)
    if problems:
        raise ShardError(problems[0])


def _scored(data: ShardDataset, mine: list[int], *args) -> str | None:
    """Check, then score this rank's shards (:func:`_score_shards` with ``args``); the
    one-line error of a bad shard, if any, returned so that every rank can stop together."""
    try:
        for k in mine:
            _check_shard(data, k)
        _score_shards(data, mine, *args)
    except ShardError as err:
        return f"evaluate: {err} (evaluate scores the whole test split, never skipping a shard)"
    return None


def _stop_on_bad_shard(env: ProcessEnv, gathered: list | None) -> None:
    """Raise, on every rank, the first bad-shard error any rank met (rank 0 broadcasts it)."""
    first = next((g[-1] for g in gathered if g[-1]), None) if gathered else None
    error = env.bcast(first)
    if error:
        raise ShardError(error)


def evaluate(
    cfg: Config,
    env: ProcessEnv | None = None,
    log: Callable[[str], None] = print,
) -> Report | None:
    """Evaluate ``evaluate.checkpoint`` on ``evaluate.data_dir``'s test split; rank 0 writes the
    report to ``evaluate.output_dir`` and returns it (other ranks return None)."""
    from hpc_bliss.evaluate.report import write_report

    env = env or detect()
    if env.comm is None:
        log(f"[evaluate] {single_process_note()}")
    e = cfg.evaluate
    device = pick_device(e.device, env)
    checkpoint = checkpoint_path(e.checkpoint, log)
    with using_device(device, env, threads=e.cpu_threads):
        encoder, hp = load_encoder(checkpoint, device)
        data = ShardDataset(e.data_dir, "test")
        check_compatible(cfg, data, hp, checkpoint)
        scorer = BatchScorer(
            border=int(e.border_tiles),
            min_flux=float(hp["min_flux_threshold"]),
            tile_slen=data.tile_slen,
            nelec_per_nmgy=list(cfg.render.nelec_per_nmgy),
            sep_threshold=float(e.sep_threshold),
            match_slack=float(e.match_slack),
            lensing=lensing_scorer(cfg, data, hp),
            calibration_samples=int(e.calibration_samples),
            seed=int(cfg.seed),
        )
        acc = _accumulator(cfg, data, scorer, encoder, device)
        mine = list(range(env.rank, len(data.shard_ids), env.world))
        tag = f"[evaluate rank {env.rank}/{env.world} {socket.gethostname()}]"
        t0 = time.perf_counter()
        error = _scored(data, mine, scorer, encoder, device, acc, log, tag)
    gathered = env.gather((acc.to_dict(), data.shard_ids, acc.example, error))
    _stop_on_bad_shard(env, gathered)
    if env.rank != 0:
        return None
    assert gathered is not None
    merged = Accumulator.merged([g[0] for g in gathered])
    report = make_report(
        merged,
        min_flux_threshold=scorer.min_flux,
        border_tiles=scorer.border,
        test_shards=sorted(data.shard_ids),
        processes=len(gathered),
        checkpoint=str(checkpoint),
        seconds=round(time.perf_counter() - t0, 2),
        config=to_yaml(cfg),
        match_slack=scorer.match_slack,
    )
    example = next(g[2] for g in gathered if g[2] is not None)
    paths = write_report(report, merged, example, Path(e.output_dir), list(data.bands))
    for line in headline_lines(report):
        log(line)
    log(f"[evaluate] report: {', '.join(str(p) for p in paths)}")
    return report
