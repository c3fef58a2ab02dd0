"""A virtual clock for tests of time-based code: time moves only when the test says so.

Hand `clock.now` where the code wants a `Clock` and `clock.sleep` where it wants a `Sleep`.
Then drive it in one of three ways::

    clock = FakeClock()
    bucket = TokenBucket(2, 5, clock=clock.now, sleep=clock.sleep)

    await clock.advance(1.5)           # move 1.5 s, waking each sleeper at its own deadline
    result = await clock.run(work())   # run work() to the end, jumping to the next deadline
                                       # whenever every task is blocked
    async with clock.auto_advance():   # the same jumping, in the background, while the
        await something()              # test awaits whatever it likes

Between steps every runnable task runs until all are blocked (`run_until_idle`), so a test sees
the state "just after" each moment. Code under test must take its time from this clock only:
real timers (`asyncio.sleep`, `wait_for` timeouts) and threads are invisible to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")

# How many loop iterations `run_until_idle` allows before it calls the code under test a busy
# loop. Real work settles within a few dozen; only a task that never blocks gets near this.
_SPIN_LIMIT = 10_000
# Where the loop's ready queue cannot be seen (not CPython's asyncio), yield this many times.
_BLIND_SPINS = 100


class Deadlock(AssertionError):
    """Every task is blocked and no sleeper is left to wake: the code would hang forever."""


class BusyLoop(AssertionError):
    """Tasks kept running without ever blocking: the code under test spins."""


class FakeClock:
    """Virtual monotonic time plus the sleeps that wait on it."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # equal deadlines wake in the order they slept
        self._new_sleeper: asyncio.Event | None = None
        self._spinning = 0  # tasks inside run_until_idle right now

    def now(self) -> float:
        """The current virtual time, in seconds (the `Clock`)."""
        return self._now

    def __call__(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Park the caller until virtual time reaches now + `seconds` (the `Sleep`)."""
        if seconds <= 0:
            await asyncio.sleep(0)  # still a yield point, as with asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        if self._new_sleeper is not None:
            self._new_sleeper.set()
        await future  # a cancelled sleeper stays in the heap, skipped when it comes up

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in `sleep`."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    @property
    def next_deadline(self) -> float | None:
        """When the earliest sleeper wakes, or None if nobody sleeps."""
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    async def run_until_idle(self) -> None:
        """Let every runnable task run until all are blocked. Time does not move."""
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        await asyncio.sleep(0)
        if ready is None:
            for _ in range(_BLIND_SPINS):
                await asyncio.sleep(0)
            return
        self._spinning += 1
        try:
            for _ in range(_SPIN_LIMIT):
                # When this task runs and nothing else is queued to run, everyone else is
                # blocked. Other tasks spinning here (an auto_advance driver while the test
                # calls advance) are queued too, and must not count as work.
                if len(ready) < self._spinning:
                    return
                await asyncio.sleep(0)
        finally:
            self._spinning -= 1
        raise BusyLoop(f"tasks still runnable after {_SPIN_LIMIT} loop iterations")

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking sleepers in deadline order at their deadline."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, when: float) -> None:
        """Move time forward to `when` (no-op if it is already later)."""
        await self.run_until_idle()
        while self._wake_next(until=when):
            await self.run_until_idle()
        self._now = max(self._now, when)
        await self.run_until_idle()

    async def run(self, aw: Awaitable[T]) -> T:
        """Run `aw` to completion, jumping to the next deadline whenever everything is blocked.

        Raises `Deadlock` if `aw` is blocked and nobody sleeps (nothing could ever wake it).
        """
        task = asyncio.ensure_future(aw)
        try:
            while True:
                await self.run_until_idle()
                if task.done():
                    return task.result()
                if not self._wake_next(until=float("inf")):
                    raise Deadlock(f"blocked forever at t={self._now}: nobody sleeps")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @contextlib.asynccontextmanager
    async def auto_advance(self) -> AsyncIterator[None]:
        """Within the block, jump to the next deadline whenever every task is blocked."""
        driver = asyncio.get_running_loop().create_task(self._drive())
        try:
            yield
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver

    async def _drive(self) -> None:
        self._new_sleeper = asyncio.Event()
        try:
            while True:
                await self.run_until_idle()
                if not self._wake_next(until=float("inf")):
                    # Nobody sleeps: wait (blocked, not spinning) until somebody does.
                    self._new_sleeper.clear()
                    await self._new_sleeper.wait()
        finally:
            self._new_sleeper = None

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def _wake_next(self, until: float) -> bool:
        """Wake the earliest sleeper due by `until`, moving time to its deadline."""
        self._drop_cancelled()
        if not self._sleepers or self._sleepers[0][0] > until:
            return False
        deadline, _, future = heapq.heappop(self._sleepers)
        self._now = max(self._now, deadline)
        future.set_result(None)
        return True
