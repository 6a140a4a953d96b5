#!/usr/bin/env python
"""Generation benchmarks, side by side in one run:

1. shard writing (HDF5, atomic, fsync) with and without Fletcher-32 checksums, against a raw
   sequential write of the same bytes to the same disk (plain file + fsync);
2. one writer (1 rank, in this process) writing each shard before rendering the next, against
   writing shard k in the background while shard k + 1 renders: wall time against the goal,
   max(render time, write time) as the sequential run measured them;
3. `hpc-bliss generate` with 2 MPI ranks against 1 rank (wall time, same shards), and the
   share of each shard's time in sampling, rendering and writing.

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
from hpc_bliss.parallel.env import ProcessEnv, mpirun_command  # noqa: E402
from hpc_bliss.simulate.batch import make_renderer  # noqa: E402
from hpc_bliss.stages.generate import generate  # noqa: E402
from hpc_bliss.stages.shard_writer import simulate_shard  # noqa: E402


def raw_write(path: Path, arrays: list[np.ndarray]) -> None:
    with open(path, "wb") as fh:
        for arr in arrays:
            fh.write(np.ascontiguousarray(arr).tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def bench_write(cfg, work: Path, repeats: int) -> dict:
    """MB/s of a shard written with and without Fletcher-32, and of a raw write, interleaved
    so all three see the same disk state; medians over ``repeats``."""
    data, _ = simulate_shard(cfg, 0, make_renderer(cfg, "cpu"))
    arrays = [a for _, a in data.datasets()]
    nbytes = sum(a.nbytes for a in arrays)
    seconds: dict[str, list[float]] = {"fletcher32": [], "plain": [], "raw": []}
    for i in range(repeats):
        for name in seconds:
            t0 = time.perf_counter()
            if name == "raw":
                raw_write(work / f"bench-{i}.raw", arrays)
            else:
                checks = name == "fletcher32"
                write_shard(work / f"bench-{name}-{i}.h5", data, {"shard_id": 0}, checksums=checks)
            seconds[name].append(time.perf_counter() - t0)
    rate = {k: nbytes / 1e6 / float(np.median(v)) for k, v in seconds.items()}
    return {
        "bytes": nbytes,
        "shard_MB_s": rate["fletcher32"],
        "shard_no_checksums_MB_s": rate["plain"],
        "raw_MB_s": rate["raw"],
        "shard_vs_raw": rate["fletcher32"] / rate["raw"],
        "fletcher32_vs_plain": rate["fletcher32"] / rate["plain"],
    }


def bench_overlap(config: str, work: Path, shards: int, images: int, device: str) -> dict:
    """One writer in this process, sequential then overlapped, on the same shards: images/s,
    seconds per phase, and the MB/s of shard files it wrote (wall time, start-up included)."""
    res = {}
    for name, overlap in (("sequential", False), ("overlapped", True)):
        out = work / name
        cfg = load_config(
            config,
            [f"generate.output_dir={out}", f"generate.n_shards={shards}"]
            + [f"generate.images_per_shard={images}", f"generate.device={device}"],
        )
        t0 = time.perf_counter()
        status = generate(cfg, env=ProcessEnv(0, 1, 0, 1), log=lambda s: None, overlap=overlap)
        wall = time.perf_counter() - t0
        assert status == 0, f"generate ({name}) failed"
        recs = json.loads((out / "manifest.json").read_text())["shards"]
        phase = {k: sum(r.get(k, 0.0) for r in recs) for k in ("sample_s", "render_s", "write_s")}
        nbytes = sum(r["bytes"] for r in recs)
        res[name] = {
            "wall_s": wall,
            "images_per_s": shards * images / wall,
            "MB_s": nbytes / 1e6 / wall,
            **phase,
        }
    seq = res["sequential"]
    bound = max(seq["sample_s"] + seq["render_s"], seq["write_s"])
    res["overlapped_vs_sequential"] = res["overlapped"]["images_per_s"] / seq["images_per_s"]
    res["overlapped_wall_vs_bound"] = res["overlapped"]["wall_s"] / bound
    return res


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
    parser.add_argument("--device", default="cpu", help="where the one-writer runs render")
    parser.add_argument(
        "--no-ranks", action="store_true", help="skip the MPI runs (a machine without mpirun)"
    )
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
            f"write ({w['bytes'] / 1e6:.1f} MB per shard): with Fletcher-32 "
            f"{w['shard_MB_s']:.0f} MB/s, without {w['shard_no_checksums_MB_s']:.0f} MB/s "
            f"(ratio {w['fletcher32_vs_plain']:.2f}), raw {w['raw_MB_s']:.0f} MB/s: "
            f"shard/raw = {w['shard_vs_raw']:.2f}",
            flush=True,
        )
        o = res["overlap"] = bench_overlap(args.config, work, args.shards, args.images, args.device)
        seq, ovl = o["sequential"], o["overlapped"]
        print(
            f"one writer: sequential {seq['images_per_s']:.1f} images/s ({seq['wall_s']:.1f} s: "
            f"render {seq['sample_s'] + seq['render_s']:.1f} s + write {seq['write_s']:.1f} s), "
            f"overlapped {ovl['images_per_s']:.1f} images/s ({ovl['wall_s']:.1f} s): "
            f"{o['overlapped_vs_sequential']:.2f}x; overlapped wall / max(render, write) = "
            f"{o['overlapped_wall_vs_bound']:.2f}; shard files {ovl['MB_s']:.0f} MB/s = "
            f"{ovl['MB_s'] / w['raw_MB_s']:.0%} of the raw write rate",
            flush=True,
        )
        if args.no_ranks:
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=2))
            return 0
        times = {}
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
            times[ranks] = seconds
            res[f"ranks_{ranks}"] = {
                "wall_s": seconds,
                "images": images,
                "images_per_s_wall": images / seconds,
                "images_per_s_per_rank": images / seconds / ranks,
                **{k: v / total for k, v in phases.items()},
            }
            print(
                f"{ranks} rank(s): {images} images in {seconds:.1f} s wall incl. start-up "
                f"({images / seconds:.1f} images/s, {images / seconds / ranks:.1f} per rank); "
                f"of each shard's time: sampling {phases['sample_s'] / total:.0%}, rendering "
                f"{phases['render_s'] / total:.0%}, writing {phases['write_s'] / total:.0%}",
                flush=True,
            )
        same = (
            json.loads((work / "r1" / "manifest.json").read_text())["shards"],
            json.loads((work / "r2" / "manifest.json").read_text())["shards"],
        )
        identical = [a["content_sha256"] for a in same[0]] == [b["content_sha256"] for b in same[1]]
        res["speedup_2_vs_1_wall"] = times[1] / times[2]
        print(
            f"2 ranks vs 1: {res['speedup_2_vs_1_wall']:.2f}x faster in wall time; "
            f"shards identical: {identical}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
