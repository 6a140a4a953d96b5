#!/usr/bin/env python
"""Training throughput, side by side in one run: optimizer steps per second of the encoder on a
fixed batch (no loading) against the DataLoader's read rate from the shards (no training),
with the same batch size, and the rate of "always the most frequent count" on the val split.
Then what the Fletcher-32 checksums cost the loader: the train split rewritten twice, with and
without them (else the same bytes), read by the same loader and by the bare reader, in turns.

    python scripts/bench_train.py DATA_DIR [--config configs/m2.yaml] [--batch 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.io.manifest import MANIFEST, read_manifest  # noqa: E402
from hpc_bliss.io.reader import ShardDataset  # noqa: E402
from hpc_bliss.io.shards import rewrite_shard  # noqa: E402
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


def train_copies(data_dir: Path, work: Path) -> dict[bool, Path]:
    """The train split of ``data_dir`` rewritten under ``work``, with (True) and without (False)
    Fletcher-32 checksums: the same data, chunks and compression otherwise."""
    copies = {}
    for checksums in (True, False):
        dst = work / ("checked" if checksums else "bare")
        (dst / "shards").mkdir(parents=True)
        shutil.copy(Path(data_dir) / MANIFEST, dst / MANIFEST)
        for r in read_manifest(data_dir)["shards"]:
            if r["split"] == "train":
                rewrite_shard(Path(data_dir) / r["file"], dst / r["file"], checksums=checksums)
        copies[checksums] = dst
    return copies


def loader_rate(data_dir: Path, batch: int, workers: int) -> float:
    """Images/s of one augmented, shuffled pass of the loader over the train split (after its
    first batch, which starts the workers)."""
    loader = DataLoader(
        Augmented(ShardDataset(data_dir, "train")),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
    )
    it = iter(loader)
    next(it)
    n = len(loader) - 1
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * batch / (time.perf_counter() - t0)


def reader_rate(data_dir: Path) -> float:
    """Images per CPU second of reading every train image in order, in this process (no
    augmentation): CPU time, which other processes on the machine disturb less than wall time."""
    with ShardDataset(data_dir, "train") as ds:
        t0 = time.process_time()
        for i in range(len(ds)):
            ds[i]
        return len(ds) / (time.process_time() - t0)


def checksum_cost(data_dir: Path, batch: int, workers: int, rounds: int) -> None:
    """Print the loader's and the reader's images/s with and without Fletcher-32 (median of
    ``rounds`` turns, alternating, after a warm-up pass of each that fills the page cache)."""
    with tempfile.TemporaryDirectory(prefix="bench-fletcher32-") as work:
        copies = train_copies(data_dir, Path(work))
        for name, rate in (
            (f"loader ({workers} workers, augmented)", lambda d: loader_rate(d, batch, workers)),
            ("reader (1 process, no augmentation, per CPU second)", reader_rate),
        ):
            runs: dict[bool, list[float]] = {True: [], False: []}
            for d in copies.values():
                rate(d)
            for i in range(rounds):
                for checksums in (True, False) if i % 2 == 0 else (False, True):
                    runs[checksums].append(rate(copies[checksums]))
            on, off = (statistics.median(runs[c]) for c in (True, False))
            spread = " / ".join(f"{min(runs[c]):.0f}-{max(runs[c]):.0f}" for c in (True, False))
            print(
                f"{name}, train split with / without Fletcher-32, median of {rounds} (range): "
                f"{on:.1f} / {off:.1f} images/s ({spread}): the checksums cost "
                f"{100 * (1 - on / off):.1f}%",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--config", default=str(ROOT / "configs" / "m2.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns of each, with and without Fletcher-32"
    )
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
    m = cfg.model
    enc = Encoder(
        len(train_set.bands),
        train_set.tile_slen,
        t.hidden,
        t.n_blocks,
        tiling=m.tiling,
        colors=m.colors,
    ).to(dev)
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
        f"tiles (truth above {t.min_flux_threshold} nmgy)",
        flush=True,
    )
    checksum_cost(Path(args.data_dir), args.batch, args.workers, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
