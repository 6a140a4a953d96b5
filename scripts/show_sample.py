#!/usr/bin/env python
"""Render a batch with a config's prior and renderer and save a PNG of one image's five bands
with its true sources marked (red + stars, cyan o galaxies).

    python scripts/show_sample.py configs/galaxies.yaml [--index 0] [--out sample.png] [k=v ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import load_config  # noqa: E402
from hpc_bliss.parallel.env import detect, pick_device  # noqa: E402
from hpc_bliss.plotting import plot_bands  # noqa: E402
from hpc_bliss.seeding import make_generator  # noqa: E402
from hpc_bliss.simulate.batch import make_renderer, simulate_batch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--index", type=int, default=0, help="which image of the batch")
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--out", default=None, help="PNG path (default runs/<name>/sample.png)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = pick_device(cfg.generate.device, detect(use_mpi=False))
    gen = make_generator(cfg.seed, "show_sample", device=device)
    catalog, batch = simulate_batch(
        cfg, max(args.n_images, args.index + 1), gen, make_renderer(cfg, device)
    )
    full = catalog.to_full_catalog()
    k = int(full["n_sources"][args.index])
    types = full["source_type"][args.index, :k, 0]
    out = Path(args.out or ROOT / "runs" / cfg.name / "sample.png")
    plot_bands(
        batch.images[args.index],
        full["plocs"][args.index, :k],
        types,
        list(cfg.prior.bands),
        out,
        title=f"{cfg.name} image {args.index}: {int((types == 0).sum())} stars, "
        f"{int((types == 1).sum())} galaxies (sky-subtracted nmgy, asinh stretch)",
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
