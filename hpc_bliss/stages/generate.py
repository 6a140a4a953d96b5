"""`hpc-bliss generate`: writers simulate shards and write them; the last one indexes the run.

Shard ``s`` is simulated from ``make_generator(seed, "shard", s)`` on the writer's device, so
its content depends on (config, seed, shard id, device type) only, whoever writes it.

Any number of writers may work on one output directory at once: the ranks of an MPI job, the
tasks of ``sbatch --array``, a resubmitted job, a rerun while an old job still runs. Each
shard is claimed before it is made (:mod:`hpc_bliss.io.claims`), so it is written exactly
once; writer i of N starts with shards i, i+N, … and then helps with any shard nobody holds.
Shard k is written in the background while shard k + 1 renders (:mod:`hpc_bliss.io.background`).
A shard that exists and validates is skipped, a shard that fails is reported (id, rank, error)
while the others go on, and the exit code is then non-zero. The writer that finds no shard
still held by another writer writes manifest.json and dataset.h5 (atomically; the same bytes
whoever writes them).

With ``generate.io = "mpio"`` the ranks of one MPI job instead write one collective file
(rank r of W makes shards r, r+W, …; rewritten as a whole, no claims).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from hpc_bliss.config import Config, config_hash, to_yaml
from hpc_bliss.errors import ConfigError, HpcBlissError, ShardError
from hpc_bliss.io.background import BackgroundWriter
from hpc_bliss.io.claims import ClaimBoard
from hpc_bliss.io.collective import (
    CollectiveWriter,
    layouts_for,
    require_parallel_h5py,
    split_sizes_for,
)
from hpc_bliss.io.manifest import (
    COLLECTIVE,
    MANIFEST,
    make_manifest,
    read_manifest,
    shard_file_record,
    shard_path,
    write_manifest,
    write_virtual_dataset,
)
from hpc_bliss.io.output import prepare_output
from hpc_bliss.io.schema import ShardFailure, ShardRecord
from hpc_bliss.io.shards import read_attrs
from hpc_bliss.parallel.env import (
    ProcessEnv,
    detect,
    pick_device,
    single_process_note,
    using_device,
)
from hpc_bliss.simulate.batch import make_renderer
from hpc_bliss.stages.shard_writer import ShardWriter


def _prepare(cfg: Config, env: ProcessEnv, digest: str, overwrite: bool) -> None:
    """Rank 0 prepares the output directory; every rank raises the same error if it fails."""
    g = cfg.generate
    if g.io == "mpio":
        require_parallel_h5py()  # the same h5py everywhere: every rank raises together
    error = None
    if env.rank == 0:
        try:
            prepare_output(Path(g.output_dir), digest, overwrite, g.claim_timeout_minutes)
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
    overlap: bool = True,
) -> int:
    """Run this writer's part of the generation; returns 0 when every shard it made is valid
    and, if it wrote the manifest, no shard is missing.

    ``generate.io = "files"`` writes a file per shard + dataset.h5 (resumable, any number of
    writers); ``"mpio"`` writes one collective file (needs parallel h5py; rewritten as a
    whole). ``overlap=False`` writes each shard before rendering the next (for benchmarks).
    """
    env = env or detect()
    if env.comm is None:
        log(f"[generate] {single_process_note()}")
    g = cfg.generate
    out = Path(g.output_dir)
    digest = config_hash(cfg)
    _prepare(cfg, env, digest, overwrite)
    device = pick_device(g.device, env)
    # a fixed thread count on CPU: the same bytes whatever the ranks per node (generate.cpu_threads)
    with using_device(device, env, threads=g.cpu_threads):
        board = None if g.io == "mpio" else ClaimBoard(out, digest, g.claim_timeout_minutes)
        run = ShardWriter(cfg, env, make_renderer(cfg, device), digest, board, log)
        log(f"{run.tag} {run.plan()} → {out}")
        if g.io == "mpio":
            sizes = split_sizes_for(g.n_shards, list(g.split), g.images_per_shard)
            attrs = {"config_hash": digest, "config_yaml": to_yaml(cfg), "n_shards": g.n_shards}
            # collective open and close; every rank writes its own rows in between
            layouts = layouts_for(cfg)
            with CollectiveWriter(out / COLLECTIVE, env.comm, sizes, layouts, attrs) as w:
                run.all(BackgroundWriter(enabled=False), w)
        else:
            with BackgroundWriter(enabled=overlap) as bg:
                run.all(bg, None)
    gathered = env.gather(
        (run.records, run.failures, run.made, run.elapsed(), socket.gethostname())
    )
    env.barrier()  # every rank's claims are released before rank 0 looks at the board
    status = 0
    if env.rank == 0:
        assert gathered is not None
        status = _finish(cfg, out, digest, gathered, board, log)
    return int(env.bcast(status))


def _finish(
    cfg: Config, out: Path, digest: str, gathered: list, board: ClaimBoard | None, log
) -> int:
    """Rank 0 of the writer: the summary line; the manifest and dataset.h5 when no other
    writer still holds a shard; the exit status."""
    g = cfg.generate
    records = sorted((r for part in gathered for r in part[0]), key=lambda r: r["id"])
    failures = sorted((f for part in gathered for f in part[1]), key=lambda f: f["id"])
    _summary(cfg, out, gathered, records, log)
    if board is not None:
        held = board.live()
        if held:
            sid = min(held)
            log(
                f"[generate] {len(held)} shard(s) still held by other writers (shard "
                f"{sid:06d}: {held[sid]}): the last writer to finish writes {MANIFEST}"
            )
            return 1 if failures else 0
        records, failures = _all_records(out, g.n_shards, records, board)
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
    edits = _kept_edits(out, records)
    if edits:
        manifest["edited"] = edits
    write_manifest(out, manifest)
    if records and g.io == "files":
        attrs = {"config_hash": digest, "config_yaml": to_yaml(cfg), "n_shards": g.n_shards}
        write_virtual_dataset(out, records, attrs)
    missing = manifest["missing"]
    if missing:
        log(f"[generate] MISSING shards {missing}: see 'failures' in {out / MANIFEST}")
        for f in manifest["failures"]:
            log(f"[generate]   shard {f['id']:06d} (rank {f['rank']}): {f['error']}")
        return 1
    return 0


def _kept_edits(out: Path, records: list[ShardRecord]) -> list:
    """The previous manifest's ``edited`` entries (``validate --refresh``) of shards that still
    hold the edited data: a rerun keeps them, a regenerated shard drops its entry."""
    if not (out / MANIFEST).is_file():
        return []
    try:
        old = read_manifest(out).get("edited", [])
    except ShardError:
        return []
    kept = {r["id"]: r["content_sha256"] for r in records}
    return [e for e in old if kept.get(e["id"]) == e["new_sha256"]]


def _all_records(
    out: Path, n_shards: int, mine: list[ShardRecord], board: ClaimBoard
) -> tuple[list[ShardRecord], list[ShardFailure]]:
    """Records of every shard in place (ours as made, the others' from their files) and the
    failures noted for the shards that are not."""
    by_id = {r["id"]: r for r in mine}
    for sid in range(n_shards):
        path = shard_path(out, sid)
        if sid not in by_id and path.exists():
            try:
                by_id[sid] = shard_file_record(path, read_attrs(path))
            except ShardError:
                continue
    failures = [f for f in board.failures() if f["id"] not in by_id]
    return [by_id[sid] for sid in sorted(by_id)], failures


def _summary(cfg: Config, out: Path, gathered: list, records: list[ShardRecord], log) -> None:
    made = sum(part[2] for part in gathered)
    seconds = max(part[3] for part in gathered)
    hosts = sorted({part[4] for part in gathered})
    where = f"{len(gathered)} rank{'s' if len(gathered) > 1 else ''} on {len(hosts)} host"
    where += f"s ({', '.join(hosts)})" if len(hosts) > 1 else f" ({hosts[0]})"
    nbytes = sum(r["bytes"] for r in records if r["seconds"] > 0)
    log(
        f"[generate] {len(records)}/{cfg.generate.n_shards} shards done by this job, {made} "
        f"images written by {where} in {seconds:.1f} s: {made / max(seconds, 1e-9):.1f} "
        f"images/s, {nbytes / 1e6:.1f} MB, {nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s → {out}"
    )
