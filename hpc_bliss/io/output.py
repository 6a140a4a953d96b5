"""A generation's output directory: what a previous run left there, and whether this run may
write into it (the same config resumes; another config's data is refused unless overwritten,
and then only the files generation writes are removed)."""

from __future__ import annotations

from pathlib import Path

from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.io.manifest import COLLECTIVE, DATASET, MANIFEST, read_manifest
from hpc_bliss.io.shards import read_attrs


def owned_files(out: Path) -> list[Path]:
    """The files a generation writes in ``out`` that exist now."""
    shards = out / "shards"
    found = sorted(shards.glob("shard-*.h5")) + sorted(shards.glob("shard-*.h5.tmp"))
    index = (out / MANIFEST, out / DATASET, out / COLLECTIVE, out / (COLLECTIVE + ".tmp"))
    return found + [p for p in index if p.exists()]


def prepare_output(out: Path, digest: str, overwrite: bool) -> None:
    """Create ``out/shards``; refuse a directory holding another config's shards unless
    ``overwrite`` (then remove the files a previous run wrote, and only those)."""
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        probe = out / "shards" / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ShardError(f"cannot write to generate.output_dir={out}: {err.strerror}") from err
    if overwrite:
        for path in owned_files(out):
            path.unlink()
        return
    hashes: dict[str, str] = {}
    if (out / MANIFEST).exists():
        hashes[str(out / MANIFEST)] = read_manifest(out).get("config_hash", "?")
    for path in sorted((out / "shards").glob("shard-*.h5")):
        try:
            hashes[str(path)] = read_attrs(path).get("config_hash", "?")
        except ShardError:
            continue  # unreadable shards are regenerated
    other = {src: h for src, h in hashes.items() if h != digest}
    if other:
        src, h = next(iter(other.items()))
        raise ConfigError(
            f"generate.output_dir={out} holds data of config hash {h} ({src}), but this config's "
            f"hash is {digest}: choose another generate.output_dir, or pass --overwrite to "
            f"replace the {len(owned_files(out))} files there"
        )
