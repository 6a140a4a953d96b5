"""Claims: how any number of independent writers share one generate.output_dir.

Before it simulates shard ``s``, a writer claims it by creating ``claims/shard-00000s.K.json``
with ``O_CREAT | O_EXCL`` (K, the attempt, starts at 0): exactly one writer can create a given
name, on a local disk or NFS alike. The file records who holds the claim (host, pid and the
pid's start time, SLURM job/array ids and restart count, start time) and the config hash.
The holder writes the shard to ``shards/shard-00000s.h5.tmp.K``, renames it into place, then
removes its claim; a writer that fails a shard leaves ``claims/shard-00000s.failed.json``.

A claim is **stale** when its holder cannot finish it:

- same host, and its pid is gone (or now belongs to another process);
- the same SLURM job at a later restart (a requeued job takes over its own earlier claims);
- older than ``generate.claim_timeout_minutes`` and its SLURM job is no longer queued or
  running (when ``squeue`` can say; without squeue, or a claim made outside SLURM on another
  host, age alone decides).

A stale claim K is taken over by creating claim K + 1, again with ``O_EXCL``, so two writers
that judge the same claim stale cannot both take it over; the stale claim and its partial file
are then removed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_bliss.io.schema import ShardFailure

CLAIMS = "claims"
_CLAIM = re.compile(r"^shard-(\d{6})\.(\d+)\.json$")
#: squeue states of a job that may still finish its claims
_ALIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


def _pid_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (Linux), or '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _running(pid: int, start: str) -> bool:
    """Whether process ``pid`` (started at ``start``, see :func:`_pid_start`) still runs here:
    a pid reused by a new process does not count."""
    if start:
        return _pid_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slurm_job() -> str:
    """This process's SLURM job as squeue names it (``123`` or ``123_4`` for an array task)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID", "")


@dataclass(frozen=True)
class Holder:
    """Who holds a claim."""

    host: str
    pid: int
    pid_start: str
    slurm_job: str
    slurm_restart: int
    start_utc: str
    start_unix: float

    @classmethod
    def this_process(cls) -> Holder:
        now = time.time()
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=_pid_start(os.getpid()),
            slurm_job=slurm_job(),
            slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            start_utc=_dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
                timespec="seconds"
            ),
            start_unix=now,
        )

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.start_utc}"


def writer_position(rank: int, world: int) -> tuple[int, int]:
    """(this writer's position, number of writers): rank r of W of array task i of T is
    writer i·W + r of T·W, so the tasks of ``sbatch --array`` start on different shards."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
    if not task or not count:
        return rank, world
    lowest = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
    step = int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    index = (int(task) - lowest) // max(step, 1)
    return index * world + rank, int(count) * world


def job_alive(job: str) -> bool | None:
    """Whether SLURM job ``job`` is queued or running: None when squeue cannot say."""
    squeue = shutil.which("squeue")
    if not job or not squeue:
        return None
    try:
        out = subprocess.run(
            [squeue, "-h", "-j", job, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue answers an error for a job id it no longer knows (it has left the queue)
        return False if "Invalid job id" in out.stderr else None
    return any(state.strip() in _ALIVE_STATES for state in out.stdout.split())


@dataclass
class Claim:
    shard_id: int
    attempt: int
    path: Path


class ClaimBoard:
    """The claims of one output directory, seen by one writer (``me``)."""

    def __init__(self, out: Path, config_hash: str, timeout_minutes: float) -> None:
        self.dir = Path(out) / CLAIMS
        self.shards = Path(out) / "shards"
        self.config_hash = config_hash
        self.timeout_s = timeout_minutes * 60.0
        self.me = Holder.this_process()
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- names ---------------------------------------------------------------------------------
    def claim_path(self, sid: int, attempt: int) -> Path:
        return self.dir / f"shard-{sid:06d}.{attempt}.json"

    def failed_path(self, sid: int) -> Path:
        return self.dir / f"shard-{sid:06d}.failed.json"

    def staging_path(self, claim: Claim) -> Path:
        """Where the holder of ``claim`` writes the shard before renaming it into place."""
        return self.shards / f"shard-{claim.shard_id:06d}.h5.tmp.{claim.attempt}"

    def attempts(self, sid: int) -> list[int]:
        found = []
        for path in self.dir.glob(f"shard-{sid:06d}.*.json"):
            m = _CLAIM.match(path.name)
            if m:
                found.append(int(m.group(2)))
        return sorted(found)

    # --- claiming ------------------------------------------------------------------------------
    def claim(self, sid: int) -> tuple[Claim | None, str]:
        """Claim shard ``sid``: (the claim, "") or (None, who holds it) when a live writer
        does. A stale claim is taken over (its partial file removed)."""
        while True:
            attempts = self.attempts(sid)
            if not attempts:
                claim = self._create(sid, 0)
                if claim:
                    self._remove_leftovers(sid, below=0)
                    return claim, ""
                continue
            top = attempts[-1]
            holder, why_stale = self.judge(self.claim_path(sid, top))
            if holder == "":  # removed while we looked: try again
                continue
            if not why_stale:
                return None, holder
            claim = self._create(sid, top + 1)
            if claim:
                self._remove_leftovers(sid, below=top + 1)
                return claim, f"took over {holder}: {why_stale}"

    def _create(self, sid: int, attempt: int) -> Claim | None:
        path = self.claim_path(sid, attempt)
        record = {
            "shard_id": sid,
            "attempt": attempt,
            "config_hash": self.config_hash,
            **asdict(self.me),
        }
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return Claim(sid, attempt, path)

    def _remove_leftovers(self, sid: int, below: int) -> None:
        """Claims of ``sid`` below attempt ``below`` and every partial file of ``sid`` but the
        one of attempt ``below`` (ours)."""
        for attempt in self.attempts(sid):
            if attempt < below:
                self.claim_path(sid, attempt).unlink(missing_ok=True)
        for tmp in self.shards.glob(f"shard-{sid:06d}.h5.tmp*"):
            if tmp.name != f"shard-{sid:06d}.h5.tmp.{below}":
                tmp.unlink(missing_ok=True)

    def judge(self, path: Path) -> tuple[str, str]:
        """(who holds the claim at ``path``, why it is stale or "" if it is live); ("", "")
        if the claim is gone."""
        try:
            text = path.read_text()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "", ""
        try:
            holder = Holder(
                **{k: v for k, v in json.loads(text).items() if k in Holder.__dataclass_fields__}
            )
        except (ValueError, TypeError):  # being written, or damaged: only age can tell
            stale = age > self.timeout_s
            return f"claim {path.name}", f"unreadable and {age / 60:.0f} min old" if stale else ""
        return holder.describe(), self._why_stale(holder)

    def _why_stale(self, holder: Holder) -> str:
        me = self.me
        if holder.host == me.host and (holder.pid, holder.pid_start) == (me.pid, me.pid_start):
            return ""  # our own
        if holder.host == me.host and not _running(holder.pid, holder.pid_start):
            return f"pid {holder.pid} is no longer running on {holder.host}"
        if holder.slurm_job and holder.slurm_job == me.slurm_job:
            if holder.slurm_restart < me.slurm_restart:
                return f"SLURM job {holder.slurm_job} was requeued"
            return ""
        age = time.time() - holder.start_unix
        if age <= self.timeout_s:
            return ""
        alive = job_alive(holder.slurm_job)
        if alive:
            return ""
        minutes = f"older than generate.claim_timeout_minutes={self.timeout_s / 60:g}"
        if alive is None:
            return f"{minutes} (squeue cannot say whether its job runs)"
        return f"{minutes} and SLURM job {holder.slurm_job} is no longer queued or running"

    # --- finishing -----------------------------------------------------------------------------
    def release(self, claim: Claim) -> None:
        """The shard is in place (or was found valid): drop the claim and any failure note."""
        self.failed_path(claim.shard_id).unlink(missing_ok=True)
        claim.path.unlink(missing_ok=True)

    def fail(self, claim: Claim, failure: ShardFailure) -> None:
        """The shard failed: note why (for whichever writer writes the manifest), drop it."""
        path = self.failed_path(claim.shard_id)
        tmp = path.with_name(f"{path.name}.{self.me.host}.{self.me.pid}")
        tmp.write_text(json.dumps(failure) + "\n")
        os.replace(tmp, path)
        self.staging_path(claim).unlink(missing_ok=True)
        claim.path.unlink(missing_ok=True)

    def live(self) -> dict[int, str]:
        """Shards whose current claim is held by a live writer other than this process."""
        held: dict[int, str] = {}
        for path in sorted(self.dir.glob("shard-*.json")):
            m = _CLAIM.match(path.name)
            if not m:
                continue
            sid = int(m.group(1))
            who, why_stale = self.judge(path)
            mine = who == self.me.describe()
            if who and not why_stale and not mine:
                held[sid] = who
        return held

    def failures(self) -> list[ShardFailure]:
        found = []
        for path in sorted(self.dir.glob("shard-*.failed.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found
