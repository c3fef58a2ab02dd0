"""Progress on a terminal for `--reconcile`: files hashed, uploads done of planned, ETA.

Drawn on stderr, at most a few times a second, only when stderr is a terminal; off a terminal
the structured logs say the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from syncd.planner import Plan, Upload

REDRAW_SECONDS = 0.2


class Progress:
    """Counts fed by the engine's callbacks, rendered as one self-overwriting line."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._start = clock()
        self._last_draw = 0.0
        self.hashed_files = 0
        self.planned_uploads = 0
        self.done_uploads = 0
        self.planned_bytes = 0
        self.done_bytes = 0

    def hashed(self, files: int, _bytes: int) -> None:
        """The scanner finished hashing `files` files so far (per account, cumulative)."""
        self.hashed_files = max(self.hashed_files, files)
        self._draw()

    def planned(self, plan: Plan) -> None:
        """An account's plan is ready."""
        self.planned_uploads += len(plan.uploads)
        self.planned_bytes += sum(u.size for u in plan.uploads)
        self._draw()

    def queued(self, up: Upload) -> None:
        """One upload queued before its account's plan was ready (syncd.early)."""
        self.planned_uploads += 1
        self.planned_bytes += up.size
        self._draw()

    def uploaded(self, up: Upload) -> None:
        """One upload finished."""
        self.done_uploads += 1
        self.done_bytes += up.size
        self._draw()

    def line(self) -> str:
        """The text of the progress line."""
        text = (
            f"hashed {self.hashed_files} files, uploaded {self.done_uploads}/{self.planned_uploads}"
        )
        eta = self.eta()
        if eta is not None:
            text += f", ETA {int(eta) // 60}m{int(eta) % 60:02d}s"
        return text

    def eta(self) -> float | None:
        """Seconds left, from the byte rate so far; None until there is a rate."""
        if not self.done_bytes or self.done_uploads >= self.planned_uploads:
            return None
        elapsed = self._clock() - self._start
        rate = self.done_bytes / max(elapsed, 1e-6)
        return max(0.0, (self.planned_bytes - self.done_bytes) / rate)

    def _draw(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        self._stream.write("\r\x1b[K" + self.line())
        self._stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the line."""
        self._draw(force=True)
        self._stream.write("\n")
        self._stream.flush()
