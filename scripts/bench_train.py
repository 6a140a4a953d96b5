#!/usr/bin/env python
"""Training throughput, side by side in one run: optimizer steps per second of the encoder on a
fixed batch (no loading) against the DataLoader's read rate from the shards (no training),
with the same batch size, and the rate of "always the most frequent count" on the val split.

    python scripts/bench_train.py DATA_DIR [--config configs/m2.yaml] [--batch 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.io.reader import ShardDataset  # noqa: E402
from hpc_bliss.model import Encoder, double_detection_nll  # noqa: E402
from hpc_bliss.train.data import Augmented  # noqa: E402


def most_frequent_rate(ds: ShardDataset, min_flux: float, border: int) -> tuple[int, float]:
    counts = torch.zeros(16, dtype=torch.long)
    for start in range(0, len(ds), 64):
        cat = ds.catalog(slice(start, min(start + 64, len(ds))))
        if min_flux > 0:
            cat = cat.filter_by_flux(min_flux)
        n = cat.symmetric_crop(border)["n_sources"].flatten()
        counts += torch.bincount(n, minlength=16)[:16]
    mode = int(counts.argmax())
    return mode, float(counts[mode]) / float(counts.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--config", default=str(ROOT / "configs" / "m2.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    print(f"command: python {shlex.join(sys.argv)}")
    cfg = load_config(args.config)
    t = cfg.train
    train_set = ShardDataset(args.data_dir, "train")
    batch = next(iter(DataLoader(train_set, batch_size=args.batch)))
    from hpc_bliss.catalog import TileCatalog

    dev = torch.device(args.device)
    batch = {"images": batch["images"].to(dev), "tile_catalog": batch["tile_catalog"]}
    target = TileCatalog(train_set.tile_slen, dict(batch["tile_catalog"])).to(dev)
    enc = Encoder(len(train_set.bands), train_set.tile_slen, t.hidden, t.n_blocks).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        loss = double_detection_nll(enc, enc(batch["images"]), target, t.min_flux_threshold)
        loss.mean().backward()
        opt.step()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    step_rate = args.steps / (time.perf_counter() - t0)
    where = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"training on {where}: {step_rate:.2f} steps/s = {step_rate * args.batch:.1f} images/s "
        f"(batch {args.batch})",
        flush=True,
    )
    loader = DataLoader(
        Augmented(train_set),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    it = iter(loader)
    next(it)
    n = min(len(loader) - 1, 4 * args.steps)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    read_rate = n / (time.perf_counter() - t0)
    print(
        f"loader ({args.workers} workers, augmented): {read_rate:.2f} batches/s = "
        f"{read_rate * args.batch:.1f} images/s: {read_rate / step_rate:.1f}x the step rate"
    )
    val = ShardDataset(args.data_dir, "val")
    mode, rate = most_frequent_rate(val, t.min_flux_threshold, cfg.evaluate.border_tiles)
    print(
        f"val split: always predicting {mode} source(s) is right on {rate:.4f} of interior "
        f"tiles (truth above {t.min_flux_threshold} nmgy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
