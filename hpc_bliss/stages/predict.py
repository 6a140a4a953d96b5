"""`hpc-bliss predict`: catalog real survey fields (SDSS frames) with a trained encoder.

Each field (``predict.fields``, directories in the SDSS archive layout) is read on the grid of
the reference band, cut into overlapping crops of the training image size, encoded (posterior
mode, optionally ``predict.n_samples`` samples) and stitched: each tile comes from the one crop
that owns it. One directory per field under ``predict.output_dir`` gets ``catalog.h5``,
``overlay.png`` and ``residual.png`` (the frame minus the rendered catalog, in σ).

Under mpirun/srun, ranks split the fields (rank r of W takes fields r, r+W, …); with fewer
fields than ranks, the ranks of a field split its rows of crops and the first of them writes.
A batch always holds the same crops and a CPU rank always uses ``predict.cpu_threads``
threads, so any number of ranks gives the same catalogs. Rerunning skips every field whose
catalog.h5 exists (written atomically) for the same checkpoint and settings.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from hpc_bliss.config import Config, config_hash
from hpc_bliss.errors import ConfigError, HpcBlissError, ShardError
from hpc_bliss.parallel.env import (
    ProcessEnv,
    detect,
    pick_device,
    single_process_note,
    using_device,
)
from hpc_bliss.predict.catalog_io import read_catalog
from hpc_bliss.predict.checks import check_checkpoint
from hpc_bliss.predict.field_run import CATALOG, finish_field, frame_tensor, layout_for, read_for
from hpc_bliss.predict.work import encode_rows, row_blocks
from hpc_bliss.stages.evaluate import checkpoint_path
from hpc_bliss.survey.files import SurveyError, field_files
from hpc_bliss.train.checkpoint import encoder_from, read_checkpoint


def run_identity(cfg: Config, checkpoint: Path) -> dict[str, str | int]:
    """What a field's catalog depends on besides the field: recorded in it, compared on resume."""
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    return {
        "checkpoint_sha256": digest,
        "config_hash": config_hash(cfg),
        "n_samples": int(cfg.predict.n_samples),
    }


def _is_done(catalog: Path, identity: dict) -> bool:
    """True when ``catalog`` is whole and was made with ``identity``; ConfigError when it was
    made with another checkpoint or settings; False when absent or unreadable."""
    if not catalog.is_file():
        return False
    try:
        _, attrs = read_catalog(catalog)
    except ShardError:
        return False
    theirs = {k: attrs.get(k) for k in identity}
    if theirs != identity:
        raise ConfigError(
            f"{catalog}: made with {theirs}, this run has {identity}: use another "
            "predict.output_dir, or delete it to predict that field again"
        )
    return True


def plan(cfg: Config, identity: dict, log: Callable[[str], None]) -> list[str]:
    """The field directories still to do (each named once; done ones are skipped, saying so)."""
    todo, seen = [], set()
    for directory in cfg.predict.fields:
        fid = field_files(directory).field_id
        if fid in seen:
            continue
        seen.add(fid)
        if _is_done(Path(cfg.predict.output_dir) / fid / CATALOG, identity):
            log(f"[predict] {fid}: done ({Path(cfg.predict.output_dir) / fid / CATALOG}), skipped")
            continue
        todo.append(str(directory))
    return todo


def _plan_everywhere(cfg: Config, identity: dict, env: ProcessEnv, log) -> list[str]:
    """Rank 0 plans; every rank gets the plan, or raises rank 0's error."""
    result: tuple = ("ok", [])
    if env.rank == 0:
        try:
            result = ("ok", plan(cfg, identity, log))
        except HpcBlissError as err:
            result = (type(err).__name__, str(err))
    kind, value = env.bcast(result)
    if kind != "ok":
        raise (ConfigError if kind == "ConfigError" else SurveyError)(value)
    return value


def assignment(n_fields: int, env: ProcessEnv) -> tuple[list[int], ProcessEnv]:
    """This rank's fields and the group of ranks sharing each of them (rank r of W: fields r,
    r+W, … alone when there are at least W fields; else field r % n with the other ranks of
    that field, as a communicator of its own)."""
    if n_fields >= env.world or n_fields == 0 or env.comm is None:
        return list(range(env.rank, n_fields, env.world)), ProcessEnv(0, 1, 0, 1, None)
    color = env.rank % n_fields
    sub = env.comm.Split(color, env.rank)
    group = ProcessEnv(sub.Get_rank(), sub.Get_size(), env.local_rank, env.local_world, sub)
    return [color], group


def _one_field(cfg, directory, encoder, group, device, attrs, tag, log) -> dict:
    """Encode this rank's share of one field; the group's first rank stitches and writes."""
    t0 = time.perf_counter()
    field = read_for(cfg, directory)
    layout = layout_for(cfg, field, encoder.border_tiles)
    image = frame_tensor(field, layout).to(device)
    t_read = time.perf_counter() - t0
    blocks = row_blocks(layout, cfg.predict.batch_size)[group.rank :: group.world]
    total = sum(len(rows) for rows in blocks) * layout.shape[1]
    done = [0]

    def progress(n: int) -> None:  # a line per tenth of the crops
        done[0] += n
        if 10 * done[0] // total > 10 * (done[0] - n) // total:
            rate = done[0] / max(time.perf_counter() - t0 - t_read, 1e-9)
            log(f"{tag} {field.field_id}: {done[0]}/{total} crops, {rate:.1f} crops/s")

    t1 = time.perf_counter()
    seed = (cfg.seed, "predict", field.field_id)
    pieces: dict = {}
    for rows in blocks:
        pieces.update(
            encode_rows(
                encoder,
                image,
                layout,
                rows,
                cfg.predict.batch_size,
                cfg.predict.n_samples,
                seed,
                progress,
            )
        )
    t_encode = time.perf_counter() - t1
    gathered = group.gather(pieces)
    if group.rank != 0:
        return {"read_s": t_read, "encode_s": t_encode}
    merged = {k: v for part in gathered or [] for k, v in part.items()}
    summary = finish_field(cfg, field, layout, merged, attrs, device)
    return {"read_s": t_read, "encode_s": t_encode, "field": field.field_id, **summary}


def _fields(cfg, todo, encoder, env, device, attrs, log) -> tuple[list[dict], list[str]]:
    """Predict this rank's fields; (summaries, one-line failures) — a failed field does not
    stop the others."""
    mine, group = assignment(len(todo), env)
    tag = f"[predict rank {env.rank}/{env.world} {socket.gethostname()}]"
    done, failed = [], []
    for k in mine:
        try:
            summary = _one_field(cfg, todo[k], encoder, group, device, attrs, tag, log)
        except HpcBlissError as err:
            failed.append(f"predict: {err}")
            log(f"{tag} FAILED {todo[k]}: {err}")
            continue
        done.append(summary)
        if "field" in summary:  # the rank that wrote the catalog
            s = summary
            log(
                f"{tag} {s['field']}: {s['n_sources']} sources; {s['read_s']:.1f} s read + "
                f"{s['encode_s']:.1f} s encode + {s['finish_s']:.1f} s write"
                + (f"; residual RMS {s['rms']}σ" if "rms" in s else "")
            )
    return done, failed


def _summary(gathered: list, seconds: float, device, log) -> None:
    summaries = [s for part in gathered for s in part[0]]
    n = sum(1 for s in summaries if s.get("field"))
    encode = max((sum(s["encode_s"] for s in part[0]) for part in gathered), default=0.0)
    ranks = len(gathered)
    log(
        f"[predict] {n} field(s) by {ranks} rank(s) on {device.type} in {seconds:.1f} s: "
        f"{n / max(seconds, 1e-9):.3f} fields/s; encoding alone {n / max(encode, 1e-9):.3f} "
        f"fields/s ({n / max(encode, 1e-9) / ranks:.3f} per rank)"
    )


def _wait_quietly(env: ProcessEnv) -> None:
    """Wait for every rank without spinning: Open MPI's blocking collectives poll at full
    CPU, so a rank done early would take a core from the rank still writing its field."""
    if env.comm is None:
        return
    request = env.comm.Ibarrier()
    while not request.Test():
        time.sleep(0.05)


def predict(cfg: Config, env: ProcessEnv | None = None, log: Callable[[str], None] = print) -> int:
    """Catalog ``predict.fields``; returns 0, or raises on every rank the first error any rank
    met (after the other fields were written)."""
    env = env or detect()
    if env.comm is None:
        log(f"[predict] {single_process_note()}")
    p = cfg.predict
    if not p.fields:
        raise ConfigError(
            "predict.fields is empty: expected SDSS field directories, predict.fields=[DIR,...]"
        )
    device = pick_device(p.device, env)
    t0 = time.perf_counter()
    with using_device(device, env, threads=p.cpu_threads):
        checkpoint = checkpoint_path(p.checkpoint, log, stage="predict")
        ckpt = read_checkpoint(checkpoint, device, key="predict.checkpoint")
        check_checkpoint(cfg, ckpt, str(checkpoint), log)
        encoder, _ = encoder_from(ckpt, device)
        identity = run_identity(cfg, checkpoint)
        todo = _plan_everywhere(cfg, identity, env, log)
        attrs = {
            **identity,
            "checkpoint": str(checkpoint),
            "tile_slen": cfg.prior.tile_slen,
            "crop_px": [cfg.prior.image_height, cfg.prior.image_width],
            "border_tiles": encoder.border_tiles,
        }
        done, failed = _fields(cfg, todo, encoder, env, device, attrs, log)
    _wait_quietly(env)
    gathered = env.gather((done, failed))
    first = None
    if env.rank == 0:
        assert gathered is not None
        _summary(gathered, time.perf_counter() - t0, device, log)
        first = next((f[0] for _, f in gathered if f), None)
    first = env.bcast(first)
    if first:
        raise SurveyError(first)
    return 0
