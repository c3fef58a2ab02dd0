"""Seeded fault injection: the same seed and the same calls give the same faults.

Every Graph call draws the same count of random numbers whatever the rates are, so changing
one rate does not shift which calls get the other faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from syncd.emulator.config import Faults
from syncd.emulator.errors import GraphApiError, transient_error


@dataclass(frozen=True, slots=True)
class CallFaults:
    """What happens to one Graph call before it is served."""

    latency_seconds: float
    drop: bool
    error: GraphApiError | None


class FaultInjector:
    """Draws faults for each call from one `random.Random(seed)`."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._errors = 0

    def configure(self, faults: Faults) -> None:
        """Use new settings, re-seeded so a run from here on repeats."""
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._errors = 0

    def draw(self) -> CallFaults:
        """Latency, drop and 5xx for the next call (a drop wins over an error)."""
        f = self.faults
        drop = self._rng.random() < f.drop_rate
        fail = self._rng.random() < f.error_rate
        latency_ms = self._rng.uniform(f.latency_min_ms, max(f.latency_min_ms, f.latency_max_ms))
        error = None
        if fail and not drop:
            error = transient_error(self._errors)
            self._errors += 1
        return CallFaults(latency_ms / 1000.0, drop, error)

    def drop_after_processing(self) -> bool:
        """Whether a stored upload loses its answer (drawn only for successful uploads)."""
        return self._rng.random() < self.faults.fault_after_processing_rate

    def storm_until(self, account: str, now: float) -> float | None:
        """The end of an injected throttling storm on the account, if one is on now."""
        deadline = self.faults.throttle_accounts.get(account)
        if deadline is None or deadline <= now:
            return None
        return deadline
