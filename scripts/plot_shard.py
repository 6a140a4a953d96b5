#!/usr/bin/env python
"""Save a PNG of one generated image's bands with its true sources marked (red + stars,
cyan o galaxies), read from a generate.output_dir through ShardDataset.

    python scripts/plot_shard.py runs/smoke/data 3 [--split train] [--out image.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.errors import HpcBlissError  # noqa: E402
from hpc_bliss.io.reader import ShardDataset  # noqa: E402
from hpc_bliss.plotting import plot_bands  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="a generate.output_dir (holding manifest.json)")
    parser.add_argument("index", type=int, help="image index within the split")
    parser.add_argument("--split", default="train", help="train, val or test (default train)")
    parser.add_argument("--out", default=None, help="PNG path (default {split}-{index}.png)")
    args = parser.parse_args(argv)
    try:
        with ShardDataset(args.data_dir, args.split) as ds:
            item = ds[args.index]
            full = ds.to_tile_catalog(item).to_full_catalog()
            bands = ds.bands
    except (HpcBlissError, IndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    k = int(full["n_sources"][0])
    types = full["source_type"][0, :k, 0]
    out = Path(args.out or f"{args.split}-{args.index:06d}.png")
    plot_bands(
        item["images"],
        full["plocs"][0, :k],
        types,
        bands,
        out,
        title=f"{args.split} image {args.index} (shard {item['shard_id']:06d} row "
        f"{item['index_in_shard']}): {int((types == 0).sum())} stars, "
        f"{int((types == 1).sum())} galaxies",
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
