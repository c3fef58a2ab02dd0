"""The per-account token bucket every Graph call goes through.

Meta scores ads_management calls per ad account (a read costs 1 point, a write 3) and blocks an
account that goes over its maximum; calls made while blocked extend the block. So each account
has its own bucket: it refills at a configured rate up to `burst`, a call takes its cost before
it is made, and throttling answers or high usage headers slow that account alone.

The shape follows aiolimiter: one injected clock, waiters queued FIFO on futures, and one timer
that sleeps until the head of the queue can be served. The timer is a small task of its own
rather than the head waiter sleeping in place, so that a change of rate, a longer pause or a
cancelled head re-arms it at once: nobody sleeps longer than needed, and nothing busy-loops.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
"""Monotonic seconds (`time.monotonic` in production)."""

Sleep = Callable[[float], Awaitable[None]]
"""Suspends the caller for that many seconds of the clock (`asyncio.sleep` in production)."""

READ_COST = 1.0
WRITE_COST = 3.0

# Usage-header adaptation (AIMD-like). Above _SLOW_ABOVE_PCT the rate is capped in proportion
# to the headroom left (multiplicative decrease, reaching the floor at 100 %); between the two
# thresholds the rate holds; at or below _RECOVER_AT_OR_BELOW_PCT it climbs back additively by
# _RECOVERY_STEP of the configured rate per observation, so a recovered account does not jump
# straight back to the rate that got it throttled.
_SLOW_ABOVE_PCT = 75.0
_RECOVER_AT_OR_BELOW_PCT = 50.0
_RECOVERY_STEP = 0.10

# A timer computed to fire exactly when the head's tokens are there can wake a hair early
# (float rounding of clock arithmetic, or the loop firing timers within its clock resolution).
# Without this slack the bucket would re-arm for an interval too small to move the clock.
# The deficit is still taken, so tokens may dip this far below zero and accounting stays exact.
_SLACK = 1e-6


class _Waiter:
    """One queued `acquire`: its cost and the future its caller awaits."""

    __slots__ = ("cost", "future")

    def __init__(self, cost: float, future: asyncio.Future[None]) -> None:
        self.cost = cost
        self.future = future


class TokenBucket:
    """A FIFO, cancellation-safe token bucket for one ad account.

    Starts full (`burst` tokens) and refills at `effective_rate` tokens per second, never above
    `burst`. `effective_rate` starts at `rate` and adapts to usage headers and throttle errors,
    but never exceeds `rate` nor drops below `min_rate_fraction * rate`.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        min_rate_fraction: float = 0.05,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, not {rate!r}")
        if not (math.isfinite(burst) and burst > 0):
            raise ValueError(f"burst must be a positive number, not {burst!r}")
        if not (0 < min_rate_fraction <= 1):
            raise ValueError(f"min_rate_fraction must be in (0, 1], not {min_rate_fraction!r}")
        self._rate = rate
        self._burst = burst
        self._min_rate = rate * min_rate_fraction
        self._effective = rate
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._tokens = burst
        self._last = now
        # A pause is the interval [_pause_started, _paused_until); earlier ones are summed in
        # _paused_before. Starting both at `now` means "no pause" without special cases.
        self._paused_until = now
        self._pause_started = now
        self._paused_before = 0.0
        self._waiters: deque[_Waiter] = deque()
        self._timer: asyncio.Task[None] | None = None
        self._timer_due: float | None = None
        self._closed: BaseException | None = None

    # -- what callers use -------------------------------------------------------------------

    async def acquire(self, cost: float) -> None:
        """Wait until `cost` tokens are available, then take them.

        Callers are served strictly in arrival order. If the caller is cancelled while waiting
        it takes no tokens (any it was just granted go back) and the queue moves on.
        """
        if not (math.isfinite(cost) and cost > 0):
            raise ValueError(f"cost must be a positive number, not {cost!r}")
        if cost > self._burst:
            raise ValueError(f"cost {cost} exceeds the bucket size {self._burst}")
        if self._closed is not None:
            raise self._closed
        now = self._clock()
        self._refill(now)
        # The fast path must not overtake anyone already queued.
        if not self._waiters and self._can_grant(now, cost):
            self._tokens -= cost
            return
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._schedule()
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise

    def close(self, reason: BaseException) -> None:
        """No more tokens, ever: every caller waiting, and every later one, gets `reason`.

        For an account whose token was refused: its queued calls would send nothing anyway,
        and should say so now rather than after waiting for tokens.
        """
        self._closed = reason
        waiting, self._waiters = self._waiters, deque()
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(reason)
        self._arm(self._clock(), None)

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for `seconds` from now: the account was throttled.

        The longest pause in force wins. The bucket is emptied and does not refill during the
        pause, so calls resume at the steady rate afterwards instead of as a burst.
        """
        if math.isnan(seconds) or math.isinf(seconds):
            raise ValueError(f"pause must be a finite number of seconds, not {seconds!r}")
        if seconds <= 0:
            return
        now = self._clock()
        self._refill(now)
        until = now + seconds
        if until <= self._paused_until:
            return  # a longer pause is already in force, and the bucket is already empty
        if now >= self._paused_until:
            # The previous pause (if any) is over: bank its length and start a new one.
            self._paused_before += self._paused_until - self._pause_started
            self._pause_started = now
        self._paused_until = until
        self._tokens = min(self._tokens, 0.0)
        self._schedule()

    def observe_utilisation(self, pct: float) -> None:
        """Adapt the effective rate to a utilisation percentage read from the usage headers."""
        if not math.isfinite(pct):
            return
        if pct > _SLOW_ABOVE_PCT:
            # The header is a level, not an event: cap the rate for this level rather than
            # compounding the cut on every response that reports it.
            headroom = (100.0 - pct) / (100.0 - _SLOW_ABOVE_PCT)
            self._set_rate(min(self._effective, max(self._min_rate, self._rate * headroom)))
        elif pct <= _RECOVER_AT_OR_BELOW_PCT:
            self._set_rate(min(self._rate, self._effective + _RECOVERY_STEP * self._rate))

    def note_throttled(self) -> None:
        """A throttle error happened: halve the effective rate (down to the floor)."""
        self._set_rate(max(self._min_rate, self._effective / 2))

    # -- what metrics read ------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """The configured rate, tokens per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket size."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill(self._clock())
        return max(0.0, self._tokens)

    @property
    def effective_rate(self) -> float:
        """The refill rate in force after adaptation, tokens per second."""
        return self._effective

    @property
    def paused_until(self) -> float:
        """Clock time before which nothing is granted (in the past when not paused)."""
        return self._paused_until

    @property
    def throttled_seconds(self) -> float:
        """Total seconds spent paused so far, the current pause counted up to now."""
        now = self._clock()
        return self._paused_before + max(0.0, min(now, self._paused_until) - self._pause_started)

    @property
    def waiting(self) -> int:
        """Number of callers waiting in `acquire`."""
        return sum(1 for w in self._waiters if not w.future.done())

    # -- the machinery ----------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        # No refill while paused: time before _paused_until earns nothing.
        start = max(self._last, self._paused_until)
        if now > start:
            self._tokens = min(self._burst, self._tokens + (now - start) * self._effective)
        self._last = max(self._last, now)

    def _can_grant(self, now: float, cost: float) -> bool:
        return now >= self._paused_until and self._tokens >= cost - _SLACK

    def _set_rate(self, rate: float) -> None:
        # Tokens earned so far were earned at the old rate.
        self._refill(self._clock())
        self._effective = rate
        self._schedule()

    def _withdraw(self, waiter: _Waiter) -> None:
        """Undo a cancelled waiter: leave the queue, or give back tokens granted too late."""
        if self._closed is not None:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.exception()  # seen: the caller was cancelled before it resumed
            return
        if waiter.future.done() and not waiter.future.cancelled():
            # Granted, but cancelled before its task resumed: the caller never got to use them.
            now = self._clock()
            self._refill(now)
            if now >= self._paused_until:  # a pause since then emptied the bucket for good
                self._tokens = min(self._burst, self._tokens + waiter.cost)
        elif waiter in self._waiters:
            self._waiters.remove(waiter)
        self._schedule()

    def _schedule(self) -> None:
        """Serve the queue head-first as far as tokens allow, then arm the timer for the head."""
        now = self._clock()
        self._refill(now)
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():  # cancelled; its task has not run its handler yet
                self._waiters.popleft()
                continue
            if not self._can_grant(now, head.cost):
                break
            self._tokens -= head.cost
            self._waiters.popleft()
            head.future.set_result(None)
        self._arm(now, self._due(now) if self._waiters else None)

    def _due(self, now: float) -> float:
        """When the head can be served: after any pause, plus the time to earn its deficit."""
        deficit = self._waiters[0].cost - self._tokens
        return max(now, self._paused_until) + max(0.0, deficit) / self._effective

    def _arm(self, now: float, due: float | None) -> None:
        if self._timer is not None and self._timer.done():
            # Cancelled from outside (loop shutdown cancels every task): it will never fire.
            self._timer, self._timer_due = None, None
        if due is not None and self._timer_due is not None and self._timer_due <= due + 1e-9:
            # A timer that fires no later than needed can stay: if it turns out early (the rate
            # dropped, a pause began) it re-arms then. Replacing it on every change would churn.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.create_task(self._fire(due - now), name="token-bucket-timer")

    async def _fire(self, delay: float) -> None:
        await self._sleep(delay)
        # This task is finishing: forget it first so _schedule does not cancel it.
        self._timer = None
        self._timer_due = None
        self._schedule()
