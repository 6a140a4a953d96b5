"""Writing in the background: shard k is written on a thread while shard k + 1 renders.

At most one write is in flight: :meth:`BackgroundWriter.submit` first waits for the previous
write to finish, so memory holds at most the shard being written and the one being rendered.
HDF5 writing, compression and checksums release the GIL, as torch's rendering does, so the two
overlap on separate cores. A write job reports its own failures; an exception that escapes one
(a bug) is raised again in the caller at the next submit or at the end, never lost.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWriter:
    """Run write jobs one at a time on one thread (or inline when ``enabled`` is False)."""

    def __init__(self, enabled: bool = True) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer") if enabled else None
        self.pending: Future | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Wait for the previous job, then start ``job`` (run it now when not enabled)."""
        self.wait()
        if self.pool is None:
            job()
        else:
            self.pending = self.pool.submit(job)

    def wait(self) -> None:
        """Wait for the job in flight, if any; raise what escaped it."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
