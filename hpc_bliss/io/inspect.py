"""What a generate.output_dir holds, and whether it is whole: :func:`summarize` (counts,
sources per tile, reference-band fluxes, which shards carry Fletcher-32 checksums),
:func:`format_summary`, :func:`validate_dir`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
from omegaconf import OmegaConf

from hpc_bliss.errors import HpcBlissError, ShardError
from hpc_bliss.io.integrity import CHECKSUM, file_unprotected
from hpc_bliss.io.manifest import DATASET, MANIFEST, SPLITS, read_manifest
from hpc_bliss.io.refresh import refresh_dir
from hpc_bliss.io.schema import SOURCE_TYPES, Manifest, ShardRecord
from hpc_bliss.io.shards import read_attrs, validate_shard


def _fluxes(path: Path, band: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sources-per-tile histogram of one shard, and its active sources' ``band`` fluxes for
    each source type (:data:`~hpc_bliss.io.schema.SOURCE_TYPES`: stars, galaxies)."""
    with h5py.File(path, "r") as f:
        cat = f["tile_catalog"]
        n = cat["n_sources"][()].astype(np.int64)
        m = cat["locs"].shape[-2]
        kind = cat["source_type"][..., 0]
        on = np.arange(m) < n[..., None]
        fluxes = [cat[f"{t}_fluxes"][..., band] for t in SOURCE_TYPES]  # star_fluxes, …
    hist = np.bincount(n.ravel(), minlength=m + 1)
    return hist, [flux[on & (kind == i)] for i, flux in enumerate(fluxes)]


def _splits(records: list[ShardRecord]) -> dict[str, dict[str, int]]:
    """Shards and images of each split."""
    return {
        s: {
            "shards": sum(r["split"] == s for r in records),
            "images": sum(r["n_images"] for r in records if r["split"] == s),
        }
        for s in SPLITS
    }


def _checksums(listed: list[Path]) -> dict:
    """Which of the shard files listed (those present and readable) carry Fletcher-32
    checksums: ``{"algorithm", "files": how many were looked at, "unprotected": those with a
    dataset without them}``."""
    paths = [p for p in dict.fromkeys(listed) if p.is_file()]  # collective.h5: once per shard
    unprotected = []
    for path in paths:
        try:
            if file_unprotected(path):
                unprotected.append(str(path))
        except ShardError:
            continue  # reported as unreadable
    return {"algorithm": CHECKSUM, "files": len(paths), "unprotected": unprotected}


def _checksum_line(c: dict, data_dir: str) -> str:
    """The summary's line on the checksums: every dataset protected, or which files are not."""
    if not c["unprotected"]:
        return f"checksums: {c['algorithm']} on every dataset of all {c['files']} shard file(s)"
    names = ", ".join(Path(p).name for p in c["unprotected"][:3])
    more = ", …" if len(c["unprotected"]) > 3 else ""
    return (
        f"checksums: NONE in {len(c['unprotected'])} of {c['files']} shard file(s) ({names}"
        f"{more}): written before {c['algorithm']}, so a damaged chunk reads unnoticed; "
        f"`hpc-bliss validate --refresh {data_dir}` adds them (or regenerate)"
    )


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0, "min": None, "median": None, "max": None}
    v = values.astype(np.float64)
    return {
        "count": int(v.size),
        "min": float(v.min()),
        "median": float(np.median(v)),
        "max": float(v.max()),
    }


def summarize(data_dir: str | Path) -> dict:
    """Counts of a generate.output_dir, read from its manifest and every shard listed there.

    Keys: data_dir, name, config_hash, n_shards (planned), tile_slen, bands, reference_band,
    splits {split: {shards, images}}, images, sources_per_tile (list: tiles holding 0..M
    sources, over all shards), n_tiles, n_sources, flux {star|galaxy: {count, min, median,
    max}} (nmgy, reference band, active sources), missing and failures (from the manifest),
    absent (listed files not on disk), unreadable (listed files that could not be read),
    checksums {algorithm, files, unprotected: files without Fletcher-32 checksums}.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    conf = OmegaConf.create(manifest["config_yaml"])
    prior = conf.prior
    band = int(prior.get("reference_band", 2))
    records = sorted(manifest["shards"], key=lambda r: r["id"])
    splits = _splits(records)
    hist = np.zeros(int(prior.max_sources) + 1, dtype=np.int64)
    fluxes: list[list[np.ndarray]] = [[] for _ in SOURCE_TYPES]
    absent, unreadable = [], []
    for r in records:
        path = data_dir / r["file"]
        if not path.is_file():
            absent.append(str(path))
            continue
        try:
            h, per_kind = _fluxes(path, band)
        except (OSError, KeyError, ValueError) as err:
            unreadable.append(f"{path}: {err}")
            continue
        if h.size > hist.size:
            hist = np.pad(hist, (0, h.size - hist.size))
        hist[: h.size] += h
        for acc, values in zip(fluxes, per_kind, strict=True):
            acc.append(values)
    joined = [np.concatenate(v) if v else np.zeros(0, np.float32) for v in fluxes]
    return {
        "data_dir": str(data_dir),
        "name": OmegaConf.select(conf, "name", default="?"),
        "config_hash": manifest.get("config_hash"),
        "n_shards": manifest.get("n_shards", len(records)),
        "tile_slen": int(prior.tile_slen),
        "bands": list(prior.bands),
        "reference_band": band,
        "splits": splits,
        "images": sum(s["images"] for s in splits.values()),
        "sources_per_tile": hist.tolist(),
        "n_tiles": int(hist.sum()),
        "n_sources": int((np.arange(hist.size) * hist).sum()),
        "flux": {kind: _stats(v) for kind, v in zip(SOURCE_TYPES, joined, strict=True)},
        "missing": list(manifest.get("missing", [])),
        "failures": list(manifest.get("failures", [])),
        "absent": absent,
        "unreadable": unreadable,
        "checksums": _checksums([data_dir / r["file"] for r in records]),
    }


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_summary(summary: dict) -> str:
    """The summary as a readable text table."""
    s = summary
    band = s["bands"][s["reference_band"]] if s["bands"] else s["reference_band"]
    lines = [
        f"{s['data_dir']}: config {s['name']!r}, hash {s['config_hash']}, tile_slen "
        f"{s['tile_slen']}, bands {','.join(s['bands'])}",
        "",
        f"{'split':<8}{'shards':>8}{'images':>10}",
    ]
    lines += [f"{k:<8}{v['shards']:>8}{v['images']:>10}" for k, v in s["splits"].items()]
    lines += [f"{'total':<8}{sum(v['shards'] for v in s['splits'].values()):>8}{s['images']:>10}"]
    lines += ["", f"sources per tile ({s['n_tiles']} tiles, {s['n_sources']} sources):"]
    total = max(s["n_tiles"], 1)
    for k, count in enumerate(s["sources_per_tile"]):
        lines.append(f"  {k:>3}  {count:>10}  {100 * count / total:6.2f} %")
    lines += ["", f"reference-band ({band}) flux of active sources, nmgy:"]
    lines.append(f"  {'type':<8}{'count':>8}{'min':>12}{'median':>12}{'max':>12}")
    for kind, st in s["flux"].items():
        lines.append(
            f"  {kind:<8}{st['count']:>8}{_num(st['min']):>12}{_num(st['median']):>12}"
            f"{_num(st['max']):>12}"
        )
    lines.append("")
    if s["missing"]:
        lines.append(f"MISSING shards (manifest): {s['missing']}")
    lines += [f"  shard {f['id']:06d} (rank {f['rank']}): {f['error']}" for f in s["failures"]]
    lines += [f"ABSENT (listed, not on disk): {p}" for p in s["absent"]]
    lines += [f"UNREADABLE: {p}" for p in s["unreadable"]]
    if not (s["missing"] or s["failures"] or s["absent"] or s["unreadable"]):
        lines.append(f"all {s['n_shards']} shards listed and present")
    lines.append(_checksum_line(s["checksums"], s["data_dir"]))
    return "\n".join(lines)


def validate_dir(data_dir: str | Path) -> list[str]:
    """Problems with a generate.output_dir, each naming its file (empty: all is well).

    Every shard listed in the manifest and every ``shards/shard-*.h5`` present is checked with
    :func:`validate_shard` against the manifest's config hash (data checksums included);
    listed shards missing on disk, shards present but not listed, content hashes that differ
    from the manifest's, shards the manifest reports missing, leftover ``.tmp`` files and a
    missing or foreign dataset.h5 are reported too.
    """
    data_dir = Path(data_dir)
    problems: list[str] = []
    manifest: Manifest | None = None
    try:
        manifest = read_manifest(data_dir)
    except ShardError as err:
        problems.append(str(err))
    digest = manifest.get("config_hash") if manifest is not None else None
    records = manifest["shards"] if manifest is not None else []
    listed: dict[Path, ShardRecord] = {(data_dir / r["file"]).resolve(): r for r in records}
    present = {p.resolve() for p in (data_dir / "shards").glob("shard-*.h5")}
    for path in sorted(set(listed) | present):
        record = listed.get(path)
        if record is None:
            problems.append(f"{path}: present on disk but not listed in {MANIFEST}")
        elif path not in present:
            problems.append(f"{path}: listed in {MANIFEST} but missing on disk")
            continue
        found = validate_shard(path, digest)
        problems += found
        if not found and record is not None:
            attrs = read_attrs(path)
            if attrs["content_sha256"] != record.get("content_sha256"):
                problems.append(f"{path}: content_sha256 differs from its {MANIFEST} entry")
    if manifest is not None and manifest.get("missing"):
        problems.append(f"{data_dir / MANIFEST}: shards {manifest['missing']} missing (failed)")
    for tmp in sorted([*data_dir.glob("*.tmp"), *(data_dir / "shards").glob("*.tmp")]):
        problems.append(f"{tmp}: leftover temporary file (an interrupted write)")
    vds = data_dir / DATASET
    if records and not vds.is_file():
        problems.append(f"{vds}: missing")
    elif vds.is_file():
        try:
            with h5py.File(vds, "r") as f:
                if digest is not None and f.attrs.get("config_hash") != digest:
                    problems.append(f"{vds}: config_hash differs from {MANIFEST}'s {digest}")
        except OSError as err:
            problems.append(f"{vds}: unreadable ({err})")
    return problems


def inspect_command(
    data_dir: str | Path, validate: bool, as_json: bool, refresh: bool = False
) -> int:
    """`hpc-bliss inspect` / `validate`: print the summary (as text or JSON); with
    ``validate``, also check every shard and name each problem (exit status 1 if any). With
    ``refresh`` (`validate --refresh`), first accept deliberate edits of shard data
    (:func:`~hpc_bliss.io.refresh.refresh_dir`; a :class:`ShardError` if it refuses)."""
    if refresh:
        refresh_dir(data_dir, log=lambda line: print(line, file=sys.stderr if as_json else None))
    try:
        summary = summarize(data_dir)
    except HpcBlissError as err:
        if not validate:
            raise
        print(f"hpc-bliss: error: {err}", file=sys.stderr)  # validation says more below
    else:
        print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if not validate:
        return 0
    problems = validate_dir(data_dir)
    for problem in problems:
        print(f"INVALID: {problem}")
    print(f"[validate] {len(problems)} problem(s) in {data_dir}")
    return 1 if problems else 0
