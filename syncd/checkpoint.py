"""Checkpoints of the manifest's write-ahead log, mostly away from the event loop's thread.

SQLite checkpoints a WAL from inside the COMMIT that takes it past 1,000 pages, and the
checkpoint copies those pages into the database and ends in fsync: a stall of 15-20 ms on this
machine's disk (more on a busy file server's) in whichever commit drew it, on the event loop's
thread, where every upload in flight waited. So every `every` commits a PASSIVE checkpoint runs
here, on this class's own connection in its own thread, and does that work first; the commit
that reaches 1,000 pages then finds little left to copy (stalls of about 5 ms measured).

The automatic checkpoint stays on: PASSIVE checkpoints never block the writer, so under steady
writing they never quite catch up, and only a checkpoint inside the writer's own commit lets
the WAL start over instead of growing for as long as the writing lasts.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

log = structlog.get_logger("syncd.manifest")

CHECKPOINT_EVERY = 50  # commits; an upload makes two of about 4-8 pages each


class WalCheckpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` in a thread after every `every` commits."""

    def __init__(self, path: Path, every: int = CHECKPOINT_EVERY) -> None:
        self._path = path.absolute()
        self._every = every
        self._commits = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-checkpoint")
        self._pending: Future[None] | None = None
        self._conn: sqlite3.Connection | None = None  # opened and used in the pool's thread only
        self._closed = False

    def committed(self) -> None:
        """One more commit; start a checkpoint when enough have gathered and none is running."""
        self._commits += 1
        if self._commits < self._every or self._closed:
            return
        if self._pending is not None and not self._pending.done():
            return  # the running one will take these frames too; ask again at the next commit
        self._commits = 0
        self._pending = self._pool.submit(self._checkpoint)

    def wait(self) -> None:
        """Until the checkpoint under way (if any) has finished."""
        if self._pending is not None:
            self._pending.result()

    def close(self) -> None:
        """Finish the checkpoint under way, close this class's connection, stop its thread."""
        if self._closed:
            return
        self._closed = True
        self._pool.submit(self._close_conn)
        self._pool.shutdown(wait=True)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, isolation_level=None)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            # Nothing is lost: the frames stay in the WAL, which grows until a later try works.
            log.warning("manifest_checkpoint_failed", manifest=str(self._path), reason=str(exc))

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
