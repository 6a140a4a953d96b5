#!/usr/bin/env python
"""Where a training step's time goes, and what cheap changes buy, side by side in one run.

One step is split into its phases, each timed on its own (wall clock, CPU or CUDA-synchronised):

* data: one augmented batch from the train split's DataLoader (``--workers``; 0 = in process);
* forward: the trunk, images -> tile features;
* loss: the heads and -log q of the true catalog (``double_detection_nll``);
* backward and optimizer: ``loss.backward()`` and ``Adam.step()``.

Then the variants of the step are timed in turns (median of ``--rounds`` rounds of ``--steps``
steps each, alternating their order), so that the ratios compare like with like on a busy
machine: the default, ``channels_last`` memory format, and (on CUDA) bf16 autocast; and on CPU
1 vs ``--threads`` intra-op threads.

    python scripts/profile_train.py DATA_DIR [--config configs/m2.yaml] [--batch 8]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.catalog import TileCatalog  # noqa: E402
from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.io.reader import ShardDataset  # noqa: E402
from hpc_bliss.model import double_detection_nll  # noqa: E402
from hpc_bliss.stages.train import build_module  # noqa: E402
from hpc_bliss.train.data import Augmented  # noqa: E402
from hpc_bliss.train.lit_module import EncoderModule  # noqa: E402


def build(cfg, data: ShardDataset, device: torch.device) -> EncoderModule:
    torch.manual_seed(0)
    return build_module(cfg, len(data.bands), data.tile_slen, 1000).to(device)


class Phases:
    """Wall-clock seconds per named phase, summed over steps."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync, self.total = (
            sync,
            dict.fromkeys(("data", "forward", "loss", "backward", "optimizer"), 0.0),
        )
        self._t = 0.0

    def start(self) -> None:
        self.sync()
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.total[name] += now - self._t
        self._t = now


def phase_profile(module, loader, device, steps: int, sync) -> dict[str, float]:
    """Seconds per step of each phase, over ``steps`` steps after a warm-up step."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    enc = module.encoder
    it = iter(loader)
    phases = Phases(sync)
    for i in range(steps + 1):
        if i == 1:
            phases.total = dict.fromkeys(phases.total, 0.0)
        phases.start()
        batch = next(it)
        images = batch["images"].to(device)
        target = TileCatalog(enc.tile_slen, dict(batch["tile_catalog"])).to(device)
        phases.lap("data")
        features = enc(images)
        phases.lap("forward")
        loss = double_detection_nll(enc, features, target, module.min_flux_threshold).mean()
        phases.lap("loss")
        opt.zero_grad()
        loss.backward()
        phases.lap("backward")
        opt.step()
        phases.lap("optimizer")
    return {k: v / steps for k, v in phases.total.items()}


def step_fn(module, images, target, device, channels_last: bool, bf16: bool):
    """One optimizer step on a fixed batch (a fresh module and optimizer per variant)."""
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    enc = module.encoder
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = double_detection_nll(enc, enc(images), target, module.min_flux_threshold)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--config", default=str(ROOT / "configs" / "m2.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each variant")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.tiling=...")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    print(f"command: python {shlex.join(sys.argv)}", flush=True)
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = ShardDataset(args.data_dir, "train")
    loader = DataLoader(
        Augmented(data), batch_size=args.batch, shuffle=True, num_workers=args.workers
    )
    module = build(cfg, data, device)
    height, width = data[0]["images"].shape[-2:]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{where}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{height}x{width} px, hidden {cfg.train.hidden}, "
        f"n_blocks {cfg.train.n_blocks}, tiling {cfg.model.tiling}",
        flush=True,
    )
    per = phase_profile(module, loader, device, args.steps, sync)
    total = sum(per.values())
    print(f"one step: {1000 * total:.0f} ms = {args.batch / total:.1f} images/s")
    for k, v in per.items():
        print(f"  {k:<10} {1000 * v:8.1f} ms  {100 * v / total:5.1f}%")

    batch = next(iter(DataLoader(data, batch_size=args.batch)))
    images = batch["images"].to(device)
    target = TileCatalog(data.tile_slen, dict(batch["tile_catalog"])).to(device)
    variants: dict[str, tuple[bool, bool, int]] = {"default": (False, False, args.threads)}
    variants["channels_last"] = (True, False, args.threads)
    if device.type == "cuda":
        variants["bf16 autocast"] = (False, True, args.threads)
    elif args.threads > 1:
        variants["1 thread"] = (False, False, 1)
    steps = {
        name: step_fn(build(cfg, data, device), images, target, device, cl, bf)
        for name, (cl, bf, _) in variants.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for name, step in steps.items():  # warm-up
        torch.set_num_threads(variants[name][2])
        step()
    for r in range(args.rounds):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            torch.set_num_threads(variants[name][2])
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            sync()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
    base = statistics.median(rates["default"])
    print(f"fixed batch, median of {args.rounds} rounds of {args.steps} steps (images/s):")
    for name, r in rates.items():
        med = statistics.median(r)
        spread = f"range {min(r):.1f}-{max(r):.1f}"
        print(f"  {name:<14} {med:8.1f}  ({med / base:.2f}x default; {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
