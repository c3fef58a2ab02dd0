"""The per-account ads_management score model and the usage headers it produces.

Each account is a leaky bucket: the score drains continuously at `max_score / decay_seconds`
points per second, and each call adds its cost (1 read, 3 write). A call that would overflow
blocks the account for `block_seconds`; calls made while blocked are refused and, as Meta
does, push the end of the block further out. Time comes from an injected clock so tests move
it by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from syncd.emulator.config import AccountLimits

READ_COST = 1.0
WRITE_COST = 3.0
ACCESS_TIER = "development_access"


@dataclass
class Bucket:
    """One account's score and block, as of `updated_at` on the emulator's clock."""

    score: float = 0.0
    updated_at: float | None = None
    blocked_until: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What the usage headers report for one account at one moment."""

    pct: float
    reset_seconds: int
    block_remaining: float


class ScoreBoard:
    """Buckets for every account, all on one clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def reset(self) -> None:
        """Forget every score and block."""
        self._buckets.clear()

    def charge(self, account: str, cost: float, limits: AccountLimits) -> bool:
        """Add a call's cost; False (and the account blocked) when it is over the maximum."""
        if not limits.enabled:
            return True
        now = self._clock()
        bucket = self._drained(account, limits, now)
        if bucket.blocked_until is not None and now < bucket.blocked_until:
            if limits.extend_block_on_call:
                bucket.blocked_until = now + limits.block_seconds
            return False
        if bucket.score + cost > limits.max_score:
            bucket.blocked_until = now + limits.block_seconds
            return False
        bucket.score += cost
        return True

    def usage(self, account: str, limits: AccountLimits, storm_until: float | None) -> Usage:
        """The account's usage now; an injected storm counts as a block."""
        now = self._clock()
        remaining = max(0.0, (storm_until or now) - now)
        if not limits.enabled:
            return Usage(100.0 if remaining else 0.0, math.ceil(remaining), remaining)
        bucket = self._drained(account, limits, now)
        if bucket.blocked_until is not None:
            remaining = max(remaining, bucket.blocked_until - now)
        drain = bucket.score / limits.decay_per_second if bucket.score else 0.0
        pct = 100.0 if remaining > 0 else min(100.0, bucket.score / limits.max_score * 100)
        # While blocked, the reset is not before the block ends: a client that waits for
        # reset_time_duration must not walk back into the block.
        return Usage(round(pct, 2), math.ceil(max(drain, remaining)), remaining)

    def _drained(self, account: str, limits: AccountLimits, now: float) -> Bucket:
        bucket = self._buckets.setdefault(account, Bucket())
        if bucket.updated_at is not None:
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.score = max(0.0, bucket.score - elapsed * limits.decay_per_second)
        bucket.updated_at = now
        if bucket.blocked_until is not None and now >= bucket.blocked_until:
            bucket.blocked_until = None
        return bucket


def usage_headers(account: str, usage: Usage) -> dict[str, str]:
    """The three usage headers Meta sends, for one account."""
    pct = int(usage.pct)
    regain_minutes = math.ceil(usage.block_remaining / 60) if usage.block_remaining > 0 else 0
    account_usage = {
        "acc_id_util_pct": usage.pct,
        "reset_time_duration": usage.reset_seconds,
        "ads_api_access_tier": ACCESS_TIER,
    }
    business = {
        account: [
            {
                "type": "ads_management",
                "call_count": pct,
                # Synthetic: Meta reports CPU and wall time shares; keep them below call_count.
                "total_cputime": pct // 4,
                "total_time": pct // 2,
                "estimated_time_to_regain_access": regain_minutes,
                "ads_api_access_tier": ACCESS_TIER,
            }
        ]
    }
    # App-level limits are not emulated: one account's throttling must never look app-wide.
    app = {"call_count": 0, "total_time": 0, "total_cputime": 0}
    return {
        "X-Ad-Account-Usage": json.dumps(account_usage),
        "X-Business-Use-Case-Usage": json.dumps(business),
        "X-App-Usage": json.dumps(app),
    }
