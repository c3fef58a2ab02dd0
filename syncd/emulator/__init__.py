"""A faithful local emulator of the Graph API's `/act_{id}/adimages` edge.

Meta's API cannot be reached from tests (nor from a user's first `syncd demo`), so the
project ships this emulator: real HTTP on loopback, Meta's error bodies and codes, the
ads_management score model with its usage headers, and seeded fault injection. Test-only
admin routes under `/__emulator__/` inspect and steer it.
"""

from syncd.emulator.app import create_app
from syncd.emulator.config import AccountLimits, EmulatorConfig, Faults
from syncd.emulator.runner import EmulatorThread, run_emulator
from syncd.emulator.state import EmulatorState, RequestRecord

__all__ = [
    "AccountLimits",
    "EmulatorConfig",
    "EmulatorState",
    "EmulatorThread",
    "Faults",
    "RequestRecord",
    "create_app",
    "run_emulator",
]
