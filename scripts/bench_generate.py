#!/usr/bin/env python
"""Generation benchmarks, side by side in one run:

1. shard writing (HDF5, atomic, fsync) against a raw sequential write of the same bytes to
   the same disk (plain file + fsync);
2. `hpc-bliss generate` with 2 MPI ranks against 1 rank (wall time, same shards);
3. end-to-end images/s per rank and the share of time in sampling, rendering and writing.

    python scripts/bench_generate.py [--config configs/m2.yaml] [--shards 8] [--images 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.io.shards import write_shard  # noqa: E402
from hpc_bliss.parallel.env import mpirun_command  # noqa: E402
from hpc_bliss.simulate.batch import make_renderer  # noqa: E402
from hpc_bliss.stages.generate import simulate_shard  # noqa: E402


def raw_write(path: Path, arrays: list[np.ndarray]) -> None:
    with open(path, "wb") as fh:
        for arr in arrays:
            fh.write(np.ascontiguousarray(arr).tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def bench_write(cfg, work: Path, repeats: int) -> dict:
    data, _ = simulate_shard(cfg, 0, make_renderer(cfg, "cpu"))
    arrays = [a for _, a in data.datasets()]
    nbytes = sum(a.nbytes for a in arrays)
    h5, raw = [], []
    for i in range(repeats):  # interleaved, so both see the same disk state
        t0 = time.perf_counter()
        write_shard(work / f"bench-{i}.h5", data, {"shard_id": 0})
        h5.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        raw_write(work / f"bench-{i}.raw", arrays)
        raw.append(time.perf_counter() - t0)
    h5_mb_s = nbytes / 1e6 / float(np.median(h5))
    raw_mb_s = nbytes / 1e6 / float(np.median(raw))
    return {
        "bytes": nbytes,
        "shard_MB_s": h5_mb_s,
        "raw_MB_s": raw_mb_s,
        "shard_vs_raw": h5_mb_s / raw_mb_s,
    }


def run_generate(
    config: str, ranks: int, out: Path, shards: int, images: int
) -> tuple[float, dict]:
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = [
        mpirun_command() or "mpirun",
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "hpc_bliss",
        "generate",
        config,
        f"generate.output_dir={out}",
        f"generate.n_shards={shards}",
        f"generate.images_per_shard={images}",
        "generate.device=cpu",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return seconds, json.loads((out / "manifest.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "m2.yaml"))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--images", type=int, default=32, help="images per shard")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where to write (default: a temp dir on the same disk)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    print(f"command: python {shlex.join(sys.argv)}")
    base = Path(args.dir or ROOT / "runs")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-generate-", dir=base))
    try:
        cfg = load_config(args.config, [f"generate.images_per_shard={args.images}"])
        res = {"write": bench_write(cfg, work, args.repeats)}
        w = res["write"]
        print(
            f"write: shard {w['shard_MB_s']:.0f} MB/s, raw {w['raw_MB_s']:.0f} MB/s "
            f"({w['bytes'] / 1e6:.1f} MB each): shard/raw = {w['shard_vs_raw']:.2f}",
            flush=True,
        )
        times, steadies = {}, {}
        for ranks in (1, 2):
            seconds, manifest = run_generate(
                args.config, ranks, work / f"r{ranks}", args.shards, args.images
            )
            recs = manifest["shards"]
            phases = {
                k: sum(r.get(k, 0.0) for r in recs) for k in ("sample_s", "render_s", "write_s")
            }
            total = sum(phases.values())
            images = sum(r["n_images"] for r in recs)
            busy = {}  # seconds each rank spent on its shards (start-up excluded)
            for r in recs:
                busy[r["rank"]] = busy.get(r["rank"], 0.0) + r["seconds"]
            per_rank = images / ranks / (sum(busy.values()) / ranks)
            steady = images / max(busy.values())
            times[ranks] = seconds
            steadies[ranks] = steady
            res[f"ranks_{ranks}"] = {
                "wall_s": seconds,
                "images": images,
                "images_per_s_wall": images / seconds,
                "images_per_s_steady": steady,
                "images_per_s_per_rank": per_rank,
                **{k: v / total for k, v in phases.items()},
            }
            print(
                f"{ranks} rank(s): {images} images in {seconds:.1f} s wall incl. start-up "
                f"({images / seconds:.1f} images/s); shard work {steady:.1f} images/s "
                f"({per_rank:.1f} per rank); time in sampling {phases['sample_s'] / total:.0%}, "
                f"rendering {phases['render_s'] / total:.0%}, writing "
                f"{phases['write_s'] / total:.0%}",
                flush=True,
            )
        same = (
            json.loads((work / "r1" / "manifest.json").read_text())["shards"],
            json.loads((work / "r2" / "manifest.json").read_text())["shards"],
        )
        identical = [a["content_sha256"] for a in same[0]] == [b["content_sha256"] for b in same[1]]
        res["speedup_2_vs_1_wall"] = times[1] / times[2]
        res["speedup_2_vs_1_steady"] = steadies[2] / steadies[1]
        print(
            f"2 ranks vs 1: {res['speedup_2_vs_1_wall']:.2f}x faster in wall time, "
            f"{res['speedup_2_vs_1_steady']:.2f}x in shard work; shards identical: {identical}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
