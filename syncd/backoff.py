"""The retry and backoff policy: pure functions of attempt counts, no clock, no randomness.

The caller supplies the random draw (so tests pass fixed numbers) and does the sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter for transient failures of one item.

    The envelope for the attempt that just failed (1-based) is `base * factor**(attempt-1)`,
    capped at `cap`; the delay is drawn uniformly below it. Full jitter spreads retries of many
    items that failed together (one network blip) instead of sending them back in lockstep.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    max_attempts: int = 5  # attempts in one pass before the item is failed for this pass

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base >= 0):
            raise ValueError(f"base must be a non-negative number, not {self.base!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"factor must be a number >= 1, not {self.factor!r}")
        if not (math.isfinite(self.cap) and self.cap >= 0):
            raise ValueError(f"cap must be a non-negative number, not {self.cap!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts!r}")

    def envelope(self, attempt: int) -> float:
        """The largest delay after failed attempt `attempt`: min(cap, base*factor**(attempt-1))."""
        if attempt < 1:
            raise ValueError(f"attempts are counted from 1, not {attempt!r}")
        try:
            grown = self.base * self.factor ** (attempt - 1)
        except OverflowError:  # factor**n past the float range: far beyond any cap
            return self.cap
        return min(self.cap, grown)

    def delay(self, attempt: int, rand: float) -> float:
        """Full jitter: `rand` in [0, 1) maps to a delay uniform in [0, envelope(attempt)]."""
        if not (0.0 <= rand <= 1.0):
            raise ValueError(f"rand must be in [0, 1), not {rand!r}")
        return rand * self.envelope(attempt)

    def should_retry(self, attempt: int) -> bool:
        """Whether another attempt follows failed attempt `attempt` in this pass."""
        return attempt < self.max_attempts


def throttle_pause(
    retry_after: float | None, consecutive: int, *, base: float = 30.0, cap: float = 900.0
) -> float:
    """How long to pause an account after a throttle answer, in seconds.

    The API's own figure wins when it gave a usable one: calls made while blocked extend the
    block, so waiting less than it says only makes things worse. Otherwise the pause doubles
    with each consecutive throttle (`consecutive` counts from 1), starting at `base`, capped.
    """
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        return retry_after
    exponent = max(1, consecutive) - 1
    if exponent >= 64:  # 2**64 * any sane base is far past any cap; avoid float overflow
        return cap
    return min(cap, base * 2.0**exponent)
