#!/usr/bin/env python
"""Flux error on bright isolated stars with and without the flux heads' aperture anchor
(``model.aperture_flux``), side by side: the same seed, the same fresh simulations (24 × 24 px,
4-px tiles, ~1 star per image, r fluxes 30–1,000 nmgy), the same number of steps.

    python scripts/bench_flux_anchor.py [--steps 150] [--batch 32]

Prints, per variant, the median |pred/true − 1| and the median bias per band (u, g, r, i, z)
over the test stars found in their tile.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.model import Encoder, double_detection_nll  # noqa: E402
from hpc_bliss.seeding import make_generator  # noqa: E402
from hpc_bliss.simulate.batch import make_renderer, simulate_batch  # noqa: E402

BRIGHT = [
    "prior.image_height=24",
    "prior.image_width=24",
    "prior.tile_slen=4",
    "prior.max_sources=1",
    "prior.mean_sources=0.03",
    "prior.prob_galaxy=0.0",
    "prior.star_flux.min=30",
    "prior.star_flux.max=1000",
    "prior.lensing.enabled=false",
]


def run(anchor: bool, steps: int, batch: int) -> str:
    cfg = load_config(ROOT / "configs" / "smoke.yaml", BRIGHT)
    renderer = make_renderer(cfg, "cpu")
    torch.manual_seed(0)
    enc = Encoder(5, 4, hidden=32, n_blocks=2, border_tiles=0, aperture_flux=anchor)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, 1e-4)
    gen = make_generator(1, "bright-train")
    t0 = time.perf_counter()
    for _ in range(steps):
        catalog, rendered = simulate_batch(cfg, batch, gen, renderer)
        loss = double_detection_nll(enc, enc(rendered.images), catalog).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    catalog, rendered = simulate_batch(cfg, 256, make_generator(2, "bright-test"), renderer)
    with torch.no_grad():
        pred = enc.eval().sample(rendered.images)
    both = (catalog["n_sources"] == 1) & (pred["n_sources"] == 1)
    ratio = (pred.fluxes[..., 0, :][both] / catalog.fluxes[..., 0, :][both]).numpy() - 1
    abs_err = np.round(np.median(np.abs(ratio), 0), 3)
    bias = np.round(np.median(ratio, 0), 3)
    name = "anchored" if anchor else "unanchored"
    return (
        f"{name:<11} {steps} steps ({seconds:.0f} s): {int(both.sum())} stars, "
        f"median |pred/true - 1| {abs_err}, median bias {bias}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python {shlex.join(sys.argv)}", flush=True)
    for anchor in (False, True):
        print(run(anchor, args.steps, args.batch), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
