"""A generation's output directory: what a previous run left there, and whether this run may
write into it (the same config resumes or joins writers already at work; another config's data
is refused unless overwritten, and then only the files generation writes are removed).

The first writer records the directory's config hash in ``claims/config.json``, created with
``O_EXCL``: of two writers with different configs started at once, the second is refused even
before either has written a shard.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from hpc_bliss.errors import ConfigError, ShardError
from hpc_bliss.io.claims import CLAIMS, ClaimBoard
from hpc_bliss.io.manifest import COLLECTIVE, DATASET, MANIFEST, read_manifest
from hpc_bliss.io.shards import read_attrs

OWNER = "config.json"  #: in claims/: the config hash this directory's data belongs to


def owned_files(out: Path) -> list[Path]:
    """The files a generation writes in ``out`` that exist now."""
    shards = out / "shards"
    found = sorted(shards.glob("shard-*.h5")) + sorted(shards.glob("shard-*.h5.tmp*"))
    found += sorted((out / CLAIMS).glob("*.json*"))
    index = [out / MANIFEST, out / DATASET, out / COLLECTIVE]
    index += sorted(out.glob(f"{MANIFEST}.tmp*")) + sorted(out.glob(f"{DATASET}.tmp*"))
    index += sorted(out.glob(f"{COLLECTIVE}.tmp*"))
    return found + [p for p in index if p.exists()]


def prepare_output(out: Path, digest: str, overwrite: bool, claim_timeout_minutes: float) -> None:
    """Create ``out/shards`` and ``out/claims``; refuse a directory holding another config's
    data unless ``overwrite`` (then remove the files a previous run wrote, and only those,
    unless a live writer still holds claims there)."""
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        (out / CLAIMS).mkdir(parents=True, exist_ok=True)
        probe = out / "shards" / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ShardError(f"cannot write to generate.output_dir={out}: {err.strerror}") from err
    if overwrite:
        held = ClaimBoard(out, digest, claim_timeout_minutes).live()
        if held:
            sid, who = next(iter(held.items()))
            raise ConfigError(
                f"generate.output_dir={out}: --overwrite refused while {len(held)} shard(s) are "
                f"being written (shard {sid:06d} by {who}); stop that writer first"
            )
        for path in owned_files(out):
            path.unlink(missing_ok=True)
    _refuse_other_config(out, digest, _hashes_found(out))
    _record_owner(out, digest)
    # another config's writer may have recorded itself between our check and our record
    _refuse_other_config(out, digest, _hashes_found(out))


def _refuse_other_config(out: Path, digest: str, hashes: dict[str, str]) -> None:
    other = {src: h for src, h in hashes.items() if h != digest}
    if other:
        src, h = next(iter(other.items()))
        raise ConfigError(
            f"generate.output_dir={out} holds data of config hash {h} ({src}), but this config's "
            f"hash is {digest}: choose another generate.output_dir, or pass --overwrite to "
            f"replace the {len(owned_files(out))} files there"
        )


def _hashes_found(out: Path) -> dict[str, str]:
    """Config hash of each thing in ``out`` that records one (source → hash)."""
    hashes: dict[str, str] = {}
    owner = out / CLAIMS / OWNER
    if owner.exists():
        try:
            hashes[str(owner)] = json.loads(owner.read_text())["config_hash"]
        except (OSError, ValueError, KeyError) as err:
            raise ShardError(f"{owner}: not a config record ({err}); remove it") from err
    if (out / MANIFEST).exists():
        hashes[str(out / MANIFEST)] = read_manifest(out).get("config_hash", "?")
    for path in sorted((out / "shards").glob("shard-*.h5")):
        try:
            hashes[str(path)] = read_attrs(path).get("config_hash", "?")
        except ShardError:
            continue  # unreadable shards are regenerated
    return hashes


def _record_owner(out: Path, digest: str) -> None:
    """Create ``claims/config.json`` with this config's hash unless it exists: written whole
    to a private name, then hard-linked into place (exclusive like O_EXCL, and no reader ever
    sees it half written)."""
    path = out / CLAIMS / OWNER
    tmp = path.with_name(f"{OWNER}.tmp.{socket.gethostname()}.{os.getpid()}")
    tmp.write_text(json.dumps({"config_hash": digest}) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
