"""The emulator's knobs: who may call, how fast, and which faults to inject.

These are plain dataclasses so tests build them directly and the admin routes can replace
fields at run time. Runtime state (images, scores, the request log) lives in `state.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class AccountLimits:
    """Meta's ads_management score model for one ad account (development tier by default).

    A read costs 1 point, a write 3; the score leaks away at `max_score / decay_seconds`
    points per second; a call that would push it past `max_score` blocks the account for
    `block_seconds`.
    """

    max_score: float = 60.0
    decay_seconds: float = 300.0
    block_seconds: float = 300.0
    enabled: bool = False
    extend_block_on_call: bool = True

    @property
    def decay_per_second(self) -> float:
        """Points the score loses each second."""
        if self.decay_seconds <= 0:
            return float("inf")
        return self.max_score / self.decay_seconds


@dataclass
class Faults:
    """Seeded fault injection for Graph routes (never the admin routes).

    `throttle_accounts` maps account digits to a deadline on the emulator's clock: until
    then every call for that account is answered 80004 (a throttling storm).
    """

    seed: int = 0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    latency_min_ms: float = 0.0
    latency_max_ms: float = 0.0
    throttle_accounts: dict[str, float] = field(default_factory=dict)
    fault_after_processing_rate: float = 0.0


@dataclass
class EmulatorConfig:
    """Everything the emulator is told at start; the admin routes may change it later."""

    valid_tokens: frozenset[str] | None = None  # None: any non-empty token is valid
    expired_tokens: frozenset[str] = frozenset()
    app_secret: str | None = None
    limits: AccountLimits = field(default_factory=AccountLimits)
    faults: Faults = field(default_factory=Faults)
    max_image_bytes: int = 30 * 1024 * 1024
    default_page_limit: int = 25
    max_page_limit: int = 500
    clock: Callable[[], float] = time.monotonic
    denied_accounts: frozenset[str] = frozenset()  # answered (#200) on every call


def copy_config(config: EmulatorConfig) -> EmulatorConfig:
    """A copy whose mutable parts are not shared (no deepcopy: the clock must stay the same)."""
    faults = dataclasses.replace(
        config.faults, throttle_accounts=dict(config.faults.throttle_accounts)
    )
    return dataclasses.replace(config, limits=dataclasses.replace(config.limits), faults=faults)


def account_digits(account: str) -> str:
    """Accept "123" or "act_123" wherever an account id is given to the emulator."""
    return account.removeprefix("act_")
