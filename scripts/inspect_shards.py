#!/usr/bin/env python
"""Summarize a generate.output_dir (images per split, sources per tile, reference-band fluxes)
and, with --validate, check every shard and exit 1 if any problem is found.
The same as `hpc-bliss inspect DIR [--validate] [--json]`.

    python scripts/inspect_shards.py runs/smoke/data [--validate] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_bliss.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
