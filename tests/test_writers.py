"""Many writers on one output directory: claims, stale claims, concurrent and killed writers,
and shards written in the background while the next renders."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_bliss.config import load_config
from hpc_bliss.errors import ConfigError
from hpc_bliss.io.claims import ClaimBoard, Holder, writer_position
from hpc_bliss.stages.generate import generate
from tests.conftest import CONFIGS, ROOT

VENV_BIN = Path(sys.executable).parent
SMOKE = CONFIGS / "smoke.yaml"


def _cfg(out, *extra):
    return load_config(SMOKE, [f"generate.output_dir={out}", *extra])


def _hashes(out):
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    assert manifest["missing"] == []
    return {s["id"]: s["content_sha256"] for s in manifest["shards"]}


def _popen(out, *extra):
    cmd = [str(VENV_BIN / "hpc-bliss"), "generate", str(SMOKE), f"generate.output_dir={out}"]
    return subprocess.Popen(
        [*cmd, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _made(log: str) -> list[int]:
    """Shard ids a writer's log says it simulated and wrote."""
    return [int(line.split("shard ")[1][:6]) for line in log.splitlines() if " images in " in line]


def _reference(tmp_path: Path, **kwargs) -> tuple[Path, Path]:
    """(data, ref): one uninterrupted run of 8 shards made in ``data`` and moved to ``ref``,
    so a run made in ``data`` afterwards has the same config, byte for byte."""
    data, ref = tmp_path / "data", tmp_path / "ref"
    assert generate(_cfg(data, "generate.n_shards=8"), log=lambda s: None, **kwargs) == 0
    data.rename(ref)
    return data, ref


def _same(out: Path, ref: Path) -> None:
    assert _hashes(out) == _hashes(ref)
    assert (out / "dataset.h5").read_bytes() == (ref / "dataset.h5").read_bytes()


def test_writer_position_follows_the_array_task(monkeypatch):
    assert writer_position(1, 2) == (1, 2)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert writer_position(0, 1) == (2, 4)
    assert writer_position(1, 2) == (5, 8)  # task index 2 of 4, rank 1 of 2


def test_a_claim_is_exclusive_and_released(tmp_path):
    board = ClaimBoard(tmp_path, "abc", timeout_minutes=60)
    claim, note = board.claim(3)
    assert claim is not None and note == "" and claim.path.name == "shard-000003.0.json"
    record = json.loads(claim.path.read_text())
    assert record["pid"] == os.getpid() and record["config_hash"] == "abc"
    assert {"host", "slurm_job", "start_utc"} <= set(record)
    board.release(claim)
    assert not claim.path.exists()


def _foreign_claim(tmp_path, pid: int, start: str, **fields) -> ClaimBoard:
    """A board whose shard 0 is claimed by another process (``pid``) on this host."""
    board = ClaimBoard(tmp_path, "abc", timeout_minutes=1)
    holder = dict(vars(Holder.this_process()), pid=pid, pid_start=start, **fields)
    board.claim_path(0, 0).write_text(json.dumps({"shard_id": 0, "attempt": 0, **holder}))
    return board


def test_a_live_writers_claim_is_left_to_it(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        board = _foreign_claim(tmp_path, sleeper.pid, start)
        claim, holder = board.claim(0)
        assert claim is None and f"pid {sleeper.pid}" in holder
        assert board.live() == {0: holder}
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same pid is dead now: its claim is stale and taken over as attempt 1
    claim, note = board.claim(0)
    assert claim is not None and claim.attempt == 1 and "no longer running" in note
    assert board.attempts(0) == [1]


def test_an_old_claim_from_elsewhere_is_taken_over_once(tmp_path):
    board = _foreign_claim(tmp_path, 1, "", host="elsewhere", start_unix=time.time() - 3600)
    other = ClaimBoard(tmp_path, "abc", timeout_minutes=1)
    first, note = board.claim(0)
    second, holder = other.claim(0)  # the claim is now ours (board's): live, not stale
    assert first is not None and "claim_timeout_minutes=1" in note
    assert second is None and "pid" in holder


def test_a_requeued_job_takes_over_its_own_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    board = _foreign_claim(tmp_path, 1, "x", host="node-b", slurm_job="4242", slurm_restart=0)
    claim, note = board.claim(0)
    assert claim is not None and "requeued" in note


def test_background_writing_gives_the_same_shards(tmp_path):
    out, ref = _reference(tmp_path, overlap=False)
    assert generate(_cfg(out, "generate.n_shards=8"), log=lambda s: None) == 0
    _same(out, ref)


def test_two_concurrent_runs_write_each_shard_once(tmp_path):
    out, ref = _reference(tmp_path)
    procs = [_popen(out, "generate.n_shards=8") for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    made = sorted(_made(logs[0]) + _made(logs[1]))
    assert made == list(range(8)), logs  # each shard written exactly once, by one of them
    _same(out, ref)
    assert not [p for p in (out / "claims").iterdir() if p.name != "config.json"]
    assert not list((out / "shards").glob("*.tmp*"))


def test_another_configs_writer_is_refused_even_before_any_shard(tmp_path):
    out = tmp_path / "data"
    first = _popen(out, "generate.n_shards=8")
    deadline = time.time() + 120
    while not (out / "claims" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    try:
        with pytest.raises(ConfigError, match="config hash"):
            generate(_cfg(out, "generate.n_shards=8", "seed=99"), log=lambda s: None)
    finally:
        first.communicate(timeout=300)
    assert first.returncode == 0


@pytest.mark.slow
def test_kill_9_mid_shard_the_other_writer_takes_over(tmp_path):
    out, ref = _reference(tmp_path)
    victim = _popen(out, "generate.n_shards=8")
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "claims").glob("shard-*.0.json")):
        time.sleep(0.01)
    survivor = _popen(out, "generate.n_shards=8")
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    log = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, log
    assert "took over pid" in log and "no longer running" in log, log
    _same(out, ref)
    assert not list((out / "shards").glob("*.tmp*"))


def test_ranks_per_node_do_not_change_the_bytes(tmp_path):
    """On this 2-core machine one rank per node used to render with 2 torch threads and two
    ranks with 1 each; shard 4 then differed in one pixel (a matrix product summed in another
    order, a Poisson draw at a rate one ulp apart). generate.cpu_threads fixes the count."""
    from hpc_bliss.parallel.env import ProcessEnv

    runs = {}
    for local_world in (1, 2):
        out = tmp_path / f"local-{local_world}"
        env = ProcessEnv(0, 1, 0, local_world)
        assert generate(_cfg(out, "generate.n_shards=8"), env=env, log=lambda s: None) == 0
        runs[local_world] = _hashes(out)
    assert runs[1] == runs[2]
