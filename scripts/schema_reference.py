#!/usr/bin/env python
"""Print the HDF5 shard schema (root attributes, datasets, galaxy parameters, from
hpc_bliss/io/schema.py) as Markdown tables — the README's schema section is this output.

    python scripts/schema_reference.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.io import schema  # noqa: E402


def _shape(spec: schema.DatasetSpec) -> str:
    return "(" + ", ".join(str(axis) for axis in spec.shape) + ")"


def _units(spec: schema.DatasetSpec) -> str:
    if spec.units is not None:
        return spec.units
    by_setting = "; ".join(f"`{k}`: {v}" for k, v in schema.IMAGE_UNITS.items())
    return f"by `render.units`: {by_setting}"


def _storage(spec: schema.DatasetSpec) -> str:
    checked = "one image per chunk, each with a Fletcher-32 checksum"
    if spec.compressed:
        return f"{checked}; gzip level {schema.GZIP_LEVEL} if `generate.compression=gzip`"
    return checked


def _bound(x: float) -> str:
    if math.isinf(x):
        return "∞"
    return "π" if x == math.pi else f"{x:g}"


def lines() -> list[str]:
    out = ["| root attribute | holds |", "|---|---|"]
    out += [f"| `{name}` | {doc} |" for name, doc in schema.ROOT_ATTRS.items()]
    out += [f"| `{name}` (optional) | {doc} |" for name, doc in schema.OPTIONAL_ATTRS.items()]
    out += [
        "",
        "| dataset | dtype | shape | holds | storage | `units` attribute |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| `{d.name}` | {d.dtype} | {_shape(d)} | {d.meaning} | {_storage(d)} | {_units(d)} |"
        for d in schema.DATASETS
    ]
    out += [
        "",
        "| `galaxy_params[..., i]` | name | unit | range | meaning |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {i} | `{p.name}` | {p.unit or '-'} | ({_bound(p.lower)}, {_bound(p.upper)}) | "
        f"{p.meaning} |"
        for i, p in enumerate(schema.GALAXY_PARAMS)
    ]
    return out


def main() -> int:
    print("\n".join(lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
