"""Settling: a file is uploaded only once it has stopped changing for `settle_seconds`.

Pure and clock-free: callers say what they observed and when. Each path remembers the last
(size, mtime_ns) seen and since when; it is due for a confirming look `settle_seconds` later,
and settled if that look sees the same thing. A writer that keeps writing keeps moving the
deadline, so a slow copy over SMB is uploaded once, with its final content.
"""

from __future__ import annotations

from dataclasses import dataclass

Stat = tuple[int, int]  # (size, mtime_ns)


@dataclass(slots=True)
class _Pending:
    stat: Stat | None  # None: not looked at yet
    since: float
    first_seen: float


class SettleTracker:
    """Paths waiting to settle, with their deadlines."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def touch(self, path: str, now: float, stat: Stat | None = None) -> None:
        """Something happened to `path`: (re)start its clock unless `stat` is what we saw."""
        entry = self._pending.get(path)
        if entry is None:
            self._pending[path] = _Pending(stat, now, now)
        elif stat is None or entry.stat != stat:
            entry.stat = stat
            entry.since = now

    def forget(self, path: str) -> None:
        """The path is gone (deleted, moved away): stop waiting for it."""
        self._pending.pop(path, None)

    def due(self, now: float) -> list[str]:
        """Paths whose clock has run `settle_seconds`: look at them again, then `confirm`."""
        limit = now - self.settle_seconds
        return [p for p, e in self._pending.items() if e.since <= limit]

    def confirm(self, path: str, stat: Stat | None, now: float) -> bool:
        """Settled if the new look matches the last one; otherwise the clock restarts.

        A `stat` of None means the file is not there (any more): it is forgotten.
        """
        entry = self._pending.get(path)
        if entry is None:
            return False
        if stat is None:
            del self._pending[path]
            return False
        if entry.stat != stat:
            entry.stat = stat
            entry.since = now
            return False
        if now - entry.since >= self.settle_seconds:
            del self._pending[path]
            return True
        return False

    def next_deadline(self) -> float | None:
        """When the earliest path is due, or None when nothing waits."""
        if not self._pending:
            return None
        return min(e.since for e in self._pending.values()) + self.settle_seconds

    def oldest_age(self, now: float) -> float:
        """Seconds since the longest-waiting path was first seen (for metrics)."""
        if not self._pending:
            return 0.0
        return now - min(e.first_seen for e in self._pending.values())
