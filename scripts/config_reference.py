#!/usr/bin/env python
"""Print the configuration reference (every key, its default and its documentation, from the
dataclasses in hpc_bliss/config/schema.py) as a Markdown table — the README's table is this output.

    python scripts/config_reference.py
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_bliss.config import schema as config_mod  # noqa: E402

FIELD = re.compile(r"^    (\w+): [^=]+=")


def docs_by_class() -> dict[str, dict[str, str]]:
    """``#:`` comments of each dataclass field, read from the schema module's source."""
    out: dict[str, dict[str, str]] = {}
    current = name = None
    for line in Path(config_mod.__file__).read_text().splitlines():
        if line.startswith("class "):
            current = line.split()[1].split("(")[0].rstrip(":")
            out[current], name = {}, None
        elif current and (m := FIELD.match(line)):
            name = m.group(1)
        if current and name and "#:" in line and not line.lstrip().startswith("#:"):
            out[current][name] = line.split("#:", 1)[1].strip()  # a field's trailing comment
    return out


def rows(instance, prefix: str, docs: dict) -> list[tuple[str, str, str]]:
    result = []
    cls = type(instance)
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            result += rows(value, key + ".", docs)
        else:
            result.append((key, repr(value), docs.get(cls.__name__, {}).get(f.name, "")))
    return result


def main() -> int:
    docs = docs_by_class()
    print("| key | default | meaning (units) |")
    print("|---|---|---|")
    for key, default, doc in rows(config_mod.Config(), "", docs):
        print(f"| `{key}` | `{default}` | {doc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
