"""One writer's shards: claim each, simulate it, write it in the background, record it.

Used by :func:`hpc_bliss.stages.generate.generate`, which says how writers share a directory.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hpc_bliss.config import Config, to_yaml
from hpc_bliss.errors import ShardError
from hpc_bliss.io.background import BackgroundWriter
from hpc_bliss.io.claims import Claim, ClaimBoard, writer_position
from hpc_bliss.io.collective import CollectiveWriter, shard_offset
from hpc_bliss.io.manifest import (
    add_times,
    collective_record,
    shard_file_record,
    shard_path,
    split_of,
)
from hpc_bliss.io.schema import CATALOG_DTYPES, ShardFailure, ShardRecord
from hpc_bliss.io.shards import (
    ShardData,
    fsync_path,
    read_attrs,
    validate_shard,
    write_shard,
)
from hpc_bliss.parallel.env import ProcessEnv
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import simulate_batch
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


class ShardWriter:
    """This writer's shards: claim each, simulate it, write it in the background (to its file
    or the collective file), record it; a shard that fails is recorded and the others go on."""

    def __init__(
        self,
        cfg: Config,
        env: ProcessEnv,
        renderer: Renderer,
        digest: str,
        board: ClaimBoard | None,
        log: Callable[[str], None],
    ) -> None:
        self.cfg, self.env, self.renderer, self.digest = cfg, env, renderer, digest
        self.board, self.log = board, log
        g = cfg.generate
        self.out = Path(g.output_dir)
        if board is None:  # mpio: the ranks of this job split the shards, nobody else
            self.position, self.writers = env.rank, env.world
        else:
            self.position, self.writers = writer_position(env.rank, env.world)
        self.home = list(range(self.position, g.n_shards, self.writers))
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        where = f"array task {task}, " if task and board is not None else ""
        self.tag = (
            f"[generate {where}rank {env.rank}/{env.world} {socket.gethostname()} "
            f"{renderer.device}]"
        )
        self.records: list[ShardRecord] = []
        self.failures: list[ShardFailure] = []
        self.failed: set[int] = set()
        self.left: dict[int, str] = {}  #: shard → the live writer we left it to
        self.made = 0
        self.t_start = time.perf_counter()

    def plan(self) -> str:
        g = self.cfg.generate
        who = f"writer {self.position} of {self.writers}: " if self.board is not None else ""
        return f"{who}{len(self.home)} of {g.n_shards} shards × {g.images_per_shard} images"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def all(self, bg: BackgroundWriter, writer: CollectiveWriter | None) -> None:
        """The home shards, then (files) any shard still missing that nobody holds, then a
        second look at the missing ones, for writers that died meanwhile."""
        for i, sid in enumerate(self.home, 1):
            self.one(sid, f"{i}/{len(self.home)}", bg, writer, home=True)
        if writer is not None:  # mpio: lockstep rounds; a rank with one shard less sits one out
            for _ in range(len(self.home), -(-self.cfg.generate.n_shards // self.writers)):
                writer.write_shard("", 0, -1, None)
        if self.board is None:
            return
        for _ in range(2):
            bg.wait()  # our own last shard is in place before we look for missing ones
            for sid in range(self.cfg.generate.n_shards):
                if sid not in self.failed and not shard_path(self.out, sid).exists():
                    self.one(sid, "extra", bg, writer, home=False)
        self.left = {s: w for s, w in self.left.items() if not shard_path(self.out, s).exists()}
        if self.left:
            sids = sorted(self.left)
            self.log(
                f"{self.tag} left {len(sids)} shard(s) held by live writers to them "
                f"({sids[0]:06d}: {self.left[sids[0]]})"
            )

    def one(
        self,
        sid: int,
        step: str,
        bg: BackgroundWriter,
        writer: CollectiveWriter | None,
        home: bool,
    ) -> None:
        path = shard_path(self.out, sid)
        claim = None
        if self.board is not None:
            if not home and path.exists():
                return
            claim, note = self.board.claim(sid)
            if claim is None:
                self.left[sid] = note
                return
            self.left.pop(sid, None)
            if note:
                self.log(f"{self.tag} shard {sid:06d}: {note}")
            if path.exists() and self._valid_existing(sid, step, path, claim):
                return
        t0 = time.perf_counter()
        try:
            data, times = simulate_shard(self.cfg, sid, self.renderer)
        except Exception as err:  # noqa: BLE001 - report the shard, keep going
            self._fail(sid, claim, err)
            if writer is not None:
                writer.write_shard("", 0, -1, None)  # this round's collective writes need us
            return
        bg.submit(lambda: self._write(sid, step, claim, data, times, t0, writer))

    def _valid_existing(self, sid: int, step: str, path: Path, claim: Claim) -> bool:
        assert self.board is not None
        problems = validate_shard(path, self.digest)
        if problems:
            self.log(f"{self.tag} shard {sid:06d}: {problems[0]}; regenerating")
            return False
        self.records.append(shard_file_record(path, read_attrs(path)))
        self.board.release(claim)
        self.log(f"{self.tag} shard {sid:06d} ({step}) exists and is valid: skipped")
        return True

    def _write(
        self,
        sid: int,
        step: str,
        claim: Claim | None,
        data: ShardData,
        times: dict,
        t0: float,
        writer: CollectiveWriter | None,
    ) -> None:
        """Write a shard (in the background), record it, release its claim."""
        g = self.cfg.generate
        split = split_of(sid, g.n_shards, list(g.split))
        t1 = time.perf_counter()
        try:
            if writer is None:
                assert claim is not None and self.board is not None
                record = self._write_file(sid, split, claim, data)
            else:
                _, offset = shard_offset(sid, g.n_shards, list(g.split), g.images_per_shard)
                writer.write_shard(split, offset, sid, data)
                device = str(self.renderer.device)
                record = collective_record(sid, split, offset, data, self.env.rank, device)
        except Exception as err:  # noqa: BLE001 - report the shard, keep going
            self._fail(sid, claim, err)
            return
        times["write_s"] = time.perf_counter() - t1
        seconds = sum(times.values())
        self.records.append(add_times(record, seconds, times))
        self.made += data.n_images
        self.log(
            f"{self.tag} shard {sid:06d} ({step}, {split}) {data.n_images} images "
            f"in {seconds:.2f} s; {self.made / self.elapsed():.1f} images/s on this rank"
        )

    def _write_file(self, sid: int, split: str, claim: Claim, data: ShardData) -> ShardRecord:
        """Write the claimed shard to its private staging name, then rename it into place."""
        assert self.board is not None
        attrs = {
            "shard_id": sid,
            "split": split,
            "seed": self.cfg.seed,
            "config_yaml": to_yaml(self.cfg),
            "config_hash": self.digest,
            "rank": self.env.rank,
            "device": str(self.renderer.device),
        }
        path, staging = shard_path(self.out, sid), self.board.staging_path(claim)
        meta = write_shard(staging, data, attrs, self.cfg.generate.compression)
        try:
            os.replace(staging, path)
        except OSError as err:
            staging.unlink(missing_ok=True)
            raise ShardError(f"cannot write {path}: {err}") from err
        fsync_path(path.parent)
        self.board.release(claim)
        return shard_file_record(path, meta)

    def _fail(self, sid: int, claim: Claim | None, err: Exception) -> None:
        error = f"{type(err).__name__}: {err}"
        failure: ShardFailure = {"id": sid, "rank": self.env.rank, "error": error}
        self.failures.append(failure)
        self.failed.add(sid)
        if claim is not None and self.board is not None:
            self.board.fail(claim, failure)
        self.log(f"{self.tag} shard {sid:06d} FAILED: {error}")
