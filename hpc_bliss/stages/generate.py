"""`hpc-bliss generate`: ranks simulate their shards and write them; rank 0 indexes the run.

Shard ``s`` is simulated from ``make_generator(seed, "shard", s)`` on the rank's device, so its
content depends on (config, seed, shard id, device type) only; rank r of W takes shards
r, r+W, r+2W, …. Rerunning skips shards that exist and validate, discards ``.tmp``
leftovers, and regenerates the rest; a shard that fails is reported (id, rank, error) while
the other shards go on, and the exit code is then non-zero.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hpc_bliss.config import Config, config_hash, to_yaml
from hpc_bliss.errors import ConfigError, HpcBlissError, ShardError
from hpc_bliss.io.collective import (
    CollectiveWriter,
    layouts_for,
    require_parallel_h5py,
    shard_offset,
    split_sizes_for,
)
from hpc_bliss.io.manifest import (
    COLLECTIVE,
    MANIFEST,
    add_times,
    collective_record,
    make_manifest,
    shard_file_record,
    shard_path,
    split_of,
    write_manifest,
    write_virtual_dataset,
)
from hpc_bliss.io.output import prepare_output
from hpc_bliss.io.schema import CATALOG_DTYPES, ShardFailure, ShardRecord
from hpc_bliss.io.shards import ShardData, read_attrs, validate_shard, write_shard
from hpc_bliss.parallel.env import (
    ProcessEnv,
    detect,
    pick_device,
    single_process_note,
    using_device,
)
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch
from hpc_bliss.simulate.render import Renderer


def simulate_shard(cfg: Config, shard_id: int, renderer: Renderer) -> tuple[ShardData, dict]:
    """Simulate one shard on the renderer's device (``generate.batch_size`` images at a time,
    all from the shard's own random stream); returns the data and seconds per phase."""
    g = cfg.generate
    gen = make_generator(cfg.seed, "shard", shard_id, device=renderer.device)
    parts: list[dict[str, np.ndarray]] = []
    times = {"sample_s": 0.0, "render_s": 0.0}
    done = 0
    while done < g.images_per_shard:
        n = min(g.batch_size, g.images_per_shard - done)
        catalog, batch = simulate_batch(cfg, n, gen, renderer, times)
        part = {
            "images": batch.images.cpu().numpy(),
            "background": batch.background.float().cpu().numpy(),
            "psf_params": batch.psf_params.float().cpu().numpy(),
        }
        for key, dtype in CATALOG_DTYPES.items():
            part[key] = catalog[key].cpu().numpy().astype(dtype)
        parts.append(part)
        done += n

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts]) if len(parts) > 1 else parts[0][key]

    data = ShardData(
        images=cat("images"),
        background=cat("background"),
        psf_params=cat("psf_params"),
        catalog={k: cat(k) for k in CATALOG_DTYPES},
        units=cfg.render.units,
    )
    return data, times


def _prepare(cfg: Config, env: ProcessEnv, digest: str, overwrite: bool) -> None:
    """Rank 0 prepares the output directory; every rank raises the same error if it fails."""
    if cfg.generate.io == "mpio":
        require_parallel_h5py()  # the same h5py everywhere: every rank raises together
    error = None
    if env.rank == 0:
        try:
            prepare_output(Path(cfg.generate.output_dir), digest, overwrite)
        except HpcBlissError as err:
            error = (type(err).__name__, str(err))
    error = env.bcast(error)
    if error:
        raise (ConfigError if error[0] == "ConfigError" else ShardError)(error[1])
    env.barrier()


def generate(
    cfg: Config,
    overwrite: bool = False,
    env: ProcessEnv | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run this rank's part of the generation; returns 0 when every shard is valid.

    ``generate.io = "files"`` writes a file per shard (resumable); ``"mpio"`` writes every
    rank's rows into one collective file (needs parallel h5py; rewritten as a whole).
    """
    env = env or detect()
    if env.comm is None:
        log(f"[generate] {single_process_note()}")
    g = cfg.generate
    out = Path(g.output_dir)
    digest = config_hash(cfg)
    _prepare(cfg, env, digest, overwrite)
    device = pick_device(g.device, env)
    with using_device(device, env):
        run = _ShardRun(cfg, env, make_renderer(cfg, device), digest, overwrite, log)
        shards = f"{len(run.mine)} of {g.n_shards} shards × {g.images_per_shard} images"
        log(f"{run.tag} {shards} → {out}")
        if g.io == "mpio":
            sizes = split_sizes_for(g.n_shards, list(g.split), g.images_per_shard)
            attrs = {"config_hash": digest, "config_yaml": to_yaml(cfg), "n_shards": g.n_shards}
            # collective open and close; every rank writes its own rows in between
            layouts = layouts_for(cfg)
            with CollectiveWriter(out / COLLECTIVE, env.comm, sizes, layouts, attrs) as w:
                run.all(w)
        else:
            run.all(None)
    gathered = env.gather(
        (run.records, run.failures, run.made, run.elapsed(), socket.gethostname())
    )
    status = 0
    if env.rank == 0:
        assert gathered is not None
        status = _finish(cfg, out, digest, gathered, log)
    return int(env.bcast(status))


class _ShardRun:
    """This rank's shards: simulate each, write it (to its file or the collective file),
    record it; a shard that fails is recorded and the others go on."""

    def __init__(
        self,
        cfg: Config,
        env: ProcessEnv,
        renderer: Renderer,
        digest: str,
        overwrite: bool,
        log: Callable[[str], None],
    ) -> None:
        self.cfg, self.env, self.renderer, self.digest = cfg, env, renderer, digest
        self.overwrite, self.log = overwrite, log
        g = cfg.generate
        self.mine = list(range(env.rank, g.n_shards, env.world))
        self.tag = (
            f"[generate rank {env.rank}/{env.world} {socket.gethostname()} {renderer.device}]"
        )
        self.records: list[ShardRecord] = []
        self.failures: list[ShardFailure] = []
        self.made = 0
        self.t_start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def all(self, writer: CollectiveWriter | None) -> None:
        for i, sid in enumerate(self.mine, 1):
            self.one(i, sid, writer)

    def _skip_existing(self, i: int, sid: int, path: Path) -> bool:
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        if not path.exists() or self.overwrite:
            return False
        problems = validate_shard(path, self.digest)
        if problems:
            self.log(f"{self.tag} shard {sid:06d}: {problems[0]}; regenerating")
            return False
        self.records.append(shard_file_record(path, read_attrs(path)))
        self.log(f"{self.tag} shard {sid:06d} ({i}/{len(self.mine)}) exists and is valid: skipped")
        return True

    def _write(
        self, sid: int, split: str, path: Path, data: ShardData, writer: CollectiveWriter | None
    ) -> ShardRecord:
        """Write a shard to its own file, or its rows to the collective file; its record."""
        cfg, g = self.cfg, self.cfg.generate
        if writer is None:
            attrs = {
                "shard_id": sid,
                "split": split,
                "seed": cfg.seed,
                "config_yaml": to_yaml(cfg),
                "config_hash": self.digest,
                "rank": self.env.rank,
                "device": str(self.renderer.device),
            }
            return shard_file_record(path, write_shard(path, data, attrs, g.compression))
        _, offset = shard_offset(sid, g.n_shards, list(g.split), g.images_per_shard)
        writer.write_shard(split, offset, sid, data)
        return collective_record(sid, split, offset, data, self.env.rank, str(self.renderer.device))

    def one(self, i: int, sid: int, writer: CollectiveWriter | None) -> None:
        cfg, g = self.cfg, self.cfg.generate
        path = shard_path(Path(g.output_dir), sid)
        if writer is None and self._skip_existing(i, sid, path):
            return
        split = split_of(sid, g.n_shards, list(g.split))
        t0 = time.perf_counter()
        try:
            data, times = simulate_shard(cfg, sid, self.renderer)
            t1 = time.perf_counter()
            record = self._write(sid, split, path, data, writer)
            times["write_s"] = time.perf_counter() - t1
        except Exception as err:  # noqa: BLE001 - report the shard, keep going
            error = f"{type(err).__name__}: {err}"
            self.failures.append({"id": sid, "rank": self.env.rank, "error": error})
            self.log(f"{self.tag} shard {sid:06d} FAILED: {error}")
            return
        seconds = time.perf_counter() - t0
        self.records.append(add_times(record, seconds, times))
        self.made += data.n_images
        self.log(
            f"{self.tag} shard {sid:06d} ({i}/{len(self.mine)}, {split}) {data.n_images} images "
            f"in {seconds:.2f} s; {self.made / self.elapsed():.1f} images/s on this rank"
        )


def _finish(cfg: Config, out: Path, digest: str, gathered: list, log) -> int:
    records = sorted((r for part in gathered for r in part[0]), key=lambda r: r["id"])
    failures = sorted((f for part in gathered for f in part[1]), key=lambda f: f["id"])
    g = cfg.generate
    manifest = make_manifest(
        digest,
        to_yaml(cfg),
        g.n_shards,
        g.images_per_shard,
        records,
        failures,
        ranks=len(gathered),
        io=g.io,
    )
    write_manifest(out, manifest)
    missing = manifest["missing"]
    if records and cfg.generate.io == "files":
        write_virtual_dataset(
            out,
            records,
            {"config_hash": digest, "config_yaml": to_yaml(cfg), "n_shards": cfg.generate.n_shards},
        )
    made = sum(part[2] for part in gathered)
    seconds = max(part[3] for part in gathered)
    hosts = sorted({part[4] for part in gathered})
    where = f"{len(gathered)} rank{'s' if len(gathered) > 1 else ''} on {len(hosts)} host"
    where += f"s ({', '.join(hosts)})" if len(hosts) > 1 else f" ({hosts[0]})"
    nbytes = sum(r["bytes"] for r in records if r["seconds"] > 0)
    log(
        f"[generate] {len(records)}/{cfg.generate.n_shards} shards valid, {made} images written "
        f"by {where} in {seconds:.1f} s: {made / max(seconds, 1e-9):.1f} images/s, "
        f"{nbytes / 1e6:.1f} MB, {nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s → {out}"
    )
    if missing:
        log(f"[generate] MISSING shards {missing}: see 'failures' in {out / MANIFEST}")
        for f in failures:
            log(f"[generate]   shard {f['id']:06d} (rank {f['rank']}): {f['error']}")
        return 1
    return 0
