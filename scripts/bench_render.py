#!/usr/bin/env python
"""Images per second: hpc-bliss's renderer against GalSim drawing the same catalogs the way
BLISS does (one GalSim object per source per band, drawn onto the image), side by side.

    python scripts/bench_render.py                       # m2 and galaxies, CPU (+ CUDA if any)
    python scripts/bench_render.py --configs m2 --n-galsim 4 --workers 2

GalSim gets ``--workers`` processes (default: every core); hpc-bliss gets the same number of
torch threads. Both sides include Poisson noise; hpc-bliss's time also covers sampling
nothing but rendering (the prior is timed separately and printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.seeding import make_generator  # noqa: E402
from hpc_bliss.simulate.prior import sample_prior  # noqa: E402
from hpc_bliss.simulate.render import Renderer  # noqa: E402


def _galsim_one(args):
    cat, render_cfg, seed = args
    from hpc_bliss.simulate.reference import render_galsim

    torch.set_num_threads(1)
    img = render_galsim(cat, render_cfg)[0]
    sky = np.array(render_cfg.sky)[:, None, None]
    nelec = np.array(render_cfg.nelec_per_nmgy)[:, None, None]
    rng = np.random.default_rng(seed)
    return rng.poisson(np.clip((img + sky) * nelec, 0, None)) / nelec - sky


def bench_galsim(cfg, n_images: int, workers: int) -> float:
    full = sample_prior(cfg.prior, n_images, make_generator(cfg.seed, "bench")).to_full_catalog()
    jobs = [(full.select([i]), cfg.render, i) for i in range(n_images)]
    t0 = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        pool.map(_galsim_one, jobs, chunksize=1)
    return n_images / (time.perf_counter() - t0)


def bench_ours(cfg, n_images: int, device: str, repeats: int = 3) -> tuple[float, float]:
    """(render images/s, prior images/s), best of ``repeats`` after a warm-up."""
    renderer = Renderer(cfg.render, cfg.prior.image_height, cfg.prior.image_width, device)
    gen = make_generator(cfg.seed, "bench", device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    cat = sample_prior(cfg.prior, n_images, gen, device)
    renderer.render(cat.select(slice(0, min(n_images, cfg.render.chunk_size))), gen)
    best_render = best_prior = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        cat = sample_prior(cfg.prior, n_images, gen, device)
        sync()
        t1 = time.perf_counter()
        renderer.render(cat, gen)
        sync()
        t2 = time.perf_counter()
        best_prior, best_render = min(best_prior, t1 - t0), min(best_render, t2 - t1)
    return n_images / best_render, n_images / best_prior


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["m2", "galaxies"])
    parser.add_argument("--n-galsim", type=int, default=4, help="images GalSim renders")
    parser.add_argument("--n-ours", type=int, default=256, help="images hpc-bliss renders (CPU)")
    parser.add_argument("--n-gpu", type=int, default=8192, help="images hpc-bliss renders (CUDA)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-galsim", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.workers)
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {args.workers} CPU threads/processes, "
        f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    results = {}
    for name in args.configs:
        path = Path(name) if name.endswith(".yaml") else ROOT / "configs" / f"{name}.yaml"
        cfg = load_config(path)
        row = {}
        row["cpu_images_per_s"], row["cpu_prior_images_per_s"] = bench_ours(cfg, args.n_ours, "cpu")
        if torch.cuda.is_available():
            cfg_gpu = load_config(path, ["render.chunk_size=512", "render.galaxy_block=2048"])
            row["cuda_images_per_s"], row["cuda_prior_images_per_s"] = bench_ours(
                cfg_gpu, args.n_gpu, "cuda"
            )
        if not args.skip_galsim:
            row["galsim_images_per_s"] = bench_galsim(cfg, args.n_galsim, args.workers)
            row["cpu_speedup_vs_galsim"] = row["cpu_images_per_s"] / row["galsim_images_per_s"]
            if "cuda_images_per_s" in row:
                row["cuda_speedup_vs_galsim"] = (
                    row["cuda_images_per_s"] / row["galsim_images_per_s"]
                )
        results[name] = row
        line = ", ".join(f"{k} {v:,.2f}" for k, v in row.items())
        print(f"{name}: {line}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
