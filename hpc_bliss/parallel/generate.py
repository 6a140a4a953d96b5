"""`hpc-bliss generate`: ranks simulate their shards and write them; rank 0 indexes the run.

Shard ``s`` is simulated from ``make_generator(seed, "shard", s)`` on the rank's device, so its
content depends on (config, seed, shard id, device type) only; rank r of W takes shards
r, r+W, r+2W, …. Rerunning skips shards that exist and validate, discards ``.tmp``
leftovers, and regenerates the rest; a shard that fails is reported (id, rank, error) while
the other shards go on, and the exit code is then non-zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hpc_bliss.config import Config, config_hash, to_yaml
from hpc_bliss.errors import ConfigError, HpcBlissError, ShardError
from hpc_bliss.io.manifest import (
    DATASET,
    MANIFEST,
    SPLITS,
    read_manifest,
    shard_path,
    split_of,
    write_json_atomic,
    write_virtual_dataset,
)
from hpc_bliss.io.shards import CATALOG_SPEC, ShardData, read_attrs, validate_shard, write_shard
from hpc_bliss.parallel.env import ProcessEnv, detect, pick_device
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer
from hpc_bliss.simulate.prior import sample_prior
from hpc_bliss.simulate.render import Renderer


def simulate_shard(cfg: Config, shard_id: int, renderer: Renderer) -> tuple[ShardData, dict]:
    """Simulate one shard on the renderer's device; returns the data and seconds per phase."""
    g = cfg.generate
    device = renderer.device
    gen = make_generator(cfg.seed, "shard", shard_id, device=device)
    parts: list[dict[str, np.ndarray]] = []
    times = {"sample_s": 0.0, "render_s": 0.0}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    done = 0
    while done < g.images_per_shard:
        n = min(g.batch_size, g.images_per_shard - done)
        t0 = time.perf_counter()
        catalog = sample_prior(cfg.prior, n, gen, device)
        sync()
        t1 = time.perf_counter()
        batch = renderer.render(catalog, gen)
        part = {
            "images": batch.images.cpu().numpy(),
            "background": batch.background.float().cpu().numpy(),
            "psf_params": batch.psf_params.float().cpu().numpy(),
        }
        for key, (dtype, _) in CATALOG_SPEC.items():
            part[key] = catalog[key].cpu().numpy().astype(dtype)
        parts.append(part)
        times["sample_s"] += t1 - t0
        times["render_s"] += time.perf_counter() - t1
        done += n

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts]) if len(parts) > 1 else parts[0][key]

    data = ShardData(
        images=cat("images"),
        background=cat("background"),
        psf_params=cat("psf_params"),
        catalog={k: cat(k) for k in CATALOG_SPEC},
        units=cfg.render.units,
    )
    return data, times


def _owned_files(out: Path) -> list[Path]:
    shards = out / "shards"
    found = sorted(shards.glob("shard-*.h5")) + sorted(shards.glob("shard-*.h5.tmp"))
    return found + [p for p in (out / MANIFEST, out / DATASET) if p.exists()]


def prepare_output(out: Path, digest: str, overwrite: bool) -> None:
    """Create ``out/shards``; refuse a directory holding another config's shards unless
    ``overwrite`` (then remove the files a previous run wrote, and only those)."""
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        probe = out / "shards" / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ShardError(f"cannot write to generate.output_dir={out}: {err.strerror}") from err
    if overwrite:
        for path in _owned_files(out):
            path.unlink()
        return
    hashes: dict[str, str] = {}
    if (out / MANIFEST).exists():
        hashes[str(out / MANIFEST)] = read_manifest(out).get("config_hash", "?")
    for path in sorted((out / "shards").glob("shard-*.h5")):
        try:
            hashes[str(path)] = read_attrs(path).get("config_hash", "?")
        except ShardError:
            continue  # unreadable shards are regenerated
    other = {src: h for src, h in hashes.items() if h != digest}
    if other:
        src, h = next(iter(other.items()))
        raise ConfigError(
            f"generate.output_dir={out} holds data of config hash {h} ({src}), but this config's "
            f"hash is {digest}: choose another generate.output_dir, or pass --overwrite to "
            f"replace the {len(_owned_files(out))} files there"
        )


def _record(path: Path, attrs: dict, seconds: float) -> dict:
    """The manifest entry of a written shard, from its root attributes."""
    return {
        "id": int(attrs["shard_id"]),
        "file": f"shards/{path.name}",
        "split": attrs["split"],
        "n_images": int(attrs["n_images"]),
        "bytes": path.stat().st_size,
        "content_sha256": attrs["content_sha256"],
        "rank": int(attrs["rank"]),
        "host": attrs["host"],
        "device": attrs["device"],
        "seconds": round(seconds, 3),
    }


def generate(
    cfg: Config,
    overwrite: bool = False,
    env: ProcessEnv | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run this rank's part of the generation; returns 0 when every shard is valid."""
    env = env or detect()
    g = cfg.generate
    out = Path(g.output_dir)
    digest = config_hash(cfg)
    error = None
    if env.rank == 0:
        try:
            prepare_output(out, digest, overwrite)
        except HpcBlissError as err:
            error = (type(err).__name__, str(err))
    error = env.bcast(error)
    if error:
        raise (ConfigError if error[0] == "ConfigError" else ShardError)(error[1])
    env.barrier()

    device = pick_device(g.device, env)
    renderer = make_renderer(cfg, device)
    mine = list(range(env.rank, g.n_shards, env.world))
    tag = f"[generate rank {env.rank}/{env.world} {device}]"
    log(f"{tag} {len(mine)} of {g.n_shards} shards × {g.images_per_shard} images → {out}")
    records, failures = [], []
    t_start = time.perf_counter()
    made = 0
    for i, sid in enumerate(mine, 1):
        path = shard_path(out, sid)
        split = split_of(sid, g.n_shards, list(g.split))
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        if path.exists() and not overwrite:
            problems = validate_shard(path, digest)
            if not problems:
                records.append(_record(path, read_attrs(path), 0.0))
                log(f"{tag} shard {sid:06d} ({i}/{len(mine)}) exists and is valid: skipped")
                continue
            log(f"{tag} shard {sid:06d}: {problems[0]}; regenerating")
        t0 = time.perf_counter()
        try:
            data, times = simulate_shard(cfg, sid, renderer)
            t1 = time.perf_counter()
            attrs = {
                "shard_id": sid,
                "split": split,
                "seed": cfg.seed,
                "config_yaml": to_yaml(cfg),
                "config_hash": digest,
                "rank": env.rank,
                "device": str(device),
            }
            write_shard(path, data, attrs)
            times["write_s"] = time.perf_counter() - t1
        except Exception as err:  # noqa: BLE001 - report the shard, keep going
            failures.append({"id": sid, "rank": env.rank, "error": f"{type(err).__name__}: {err}"})
            log(f"{tag} shard {sid:06d} FAILED: {type(err).__name__}: {err}")
            continue
        seconds = time.perf_counter() - t0
        record = _record(path, read_attrs(path), seconds)
        record.update({k: round(v, 3) for k, v in times.items()})
        records.append(record)
        made += data.n_images
        rate = made / (time.perf_counter() - t_start)
        log(
            f"{tag} shard {sid:06d} ({i}/{len(mine)}, {split}) {data.n_images} images in "
            f"{seconds:.2f} s; {rate:.1f} images/s on this rank"
        )
    gathered = env.gather((records, failures, made, time.perf_counter() - t_start))
    status = 0
    if env.rank == 0:
        assert gathered is not None
        status = _finish(cfg, out, digest, gathered, log)
    return int(env.bcast(status))


def _finish(cfg: Config, out: Path, digest: str, gathered: list, log) -> int:
    records = sorted((r for part in gathered for r in part[0]), key=lambda r: r["id"])
    failures = sorted((f for part in gathered for f in part[1]), key=lambda f: f["id"])
    done_ids = {r["id"] for r in records}
    missing = [sid for sid in range(cfg.generate.n_shards) if sid not in done_ids]
    manifest = {
        "schema_version": 1,
        "config_hash": digest,
        "config_yaml": to_yaml(cfg),
        "n_shards": cfg.generate.n_shards,
        "images_per_shard": cfg.generate.images_per_shard,
        "splits": {s: [r["id"] for r in records if r["split"] == s] for s in SPLITS},
        "images": {s: sum(r["n_images"] for r in records if r["split"] == s) for s in SPLITS},
        "shards": records,
        "missing": missing,
        "failures": failures,
        "ranks": len(gathered),
    }
    write_json_atomic(out / MANIFEST, manifest)
    if records:
        write_virtual_dataset(
            out,
            records,
            {"config_hash": digest, "config_yaml": to_yaml(cfg), "n_shards": cfg.generate.n_shards},
        )
    made = sum(part[2] for part in gathered)
    seconds = max(part[3] for part in gathered)
    nbytes = sum(r["bytes"] for r in records if r["seconds"] > 0)
    log(
        f"[generate] {len(records)}/{cfg.generate.n_shards} shards valid, {made} images written "
        f"by {len(gathered)} ranks in {seconds:.1f} s: {made / max(seconds, 1e-9):.1f} images/s, "
        f"{nbytes / 1e6:.1f} MB, {nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s → {out}"
    )
    if missing:
        log(f"[generate] MISSING shards {missing}: see 'failures' in {out / MANIFEST}")
        for f in failures:
            log(f"[generate]   shard {f['id']:06d} (rank {f['rank']}): {f['error']}")
        return 1
    return 0
