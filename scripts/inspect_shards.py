#!/usr/bin/env python
"""Summarize a generate.output_dir (images per split, sources per tile, reference-band fluxes)
and, with --validate, check every shard and exit 1 if any problem is found.

    python scripts/inspect_shards.py runs/smoke/data [--validate] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.errors import HpcBlissError  # noqa: E402
from hpc_bliss.io.inspect import format_summary, summarize, validate_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="a generate.output_dir (holding manifest.json)")
    parser.add_argument("--validate", action="store_true", help="check every shard's data")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.data_dir)
    except HpcBlissError as err:
        print(f"error: {err}", file=sys.stderr)
        if not args.validate:
            return 1
    else:
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if not args.validate:
        return 0
    problems = validate_dir(args.data_dir)
    for problem in problems:
        print(f"INVALID: {problem}")
    print(f"validate: {len(problems)} problem(s) in {args.data_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
