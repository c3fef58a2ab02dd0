"""The world a benchmark runs in: the bundled emulator, config files, the run's settings."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.emulator import AccountLimits, EmulatorConfig, EmulatorThread, Faults, RequestRecord

TOKEN = "EAAB-bench-token-not-a-secret"  # noqa: S105 - the emulator takes any token
ACCOUNT = "1234567890"
HOST = "127.0.0.1"  # the only network this suite ever touches


@dataclass
class Context:
    """One run of the suite: its size, its scratch directory, things benchmarks share."""

    size: str  # "smoke" | "full"
    scratch: Path
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """The real thing, rather than the CI-sized smoke run."""
        return self.size == "full"

    def pick(self, smoke: Any, full: Any) -> Any:
        """The parameter for this size."""
        return full if self.full else smoke

    def workdir(self, name: str) -> Path:
        """A fresh, empty directory under the scratch directory."""
        path = self.scratch / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


@contextmanager
def emulator(
    latency_ms: float = 0.0, limits: AccountLimits | None = None
) -> Iterator[EmulatorThread]:
    """The bundled emulator in a thread of this process, on 127.0.0.1 only.

    Running it in-process means its request log's clock (`time.monotonic`) is ours.
    """
    faults = Faults(latency_min_ms=latency_ms, latency_max_ms=latency_ms)
    config = EmulatorConfig(faults=faults, limits=limits or AccountLimits())
    with EmulatorThread(config, host=HOST) as emu:
        yield emu


def fresh(emu: EmulatorThread) -> None:
    """Back to an empty emulator with its initial settings (a new account each time)."""
    emu.call(emu.state.reset)


def set_limits(emu: EmulatorThread, limits: AccountLimits) -> None:
    """Replace the score model every account uses (and forget scores so far)."""

    def apply() -> None:
        emu.state.config.limits = dataclasses.replace(limits)
        emu.state.scores.reset()

    emu.call(apply)


def image_count(emu: EmulatorThread, account: str = ACCOUNT) -> int:
    """Active images the account holds."""
    return len(emu.call(emu.state.images, account))


def request_log(emu: EmulatorThread) -> list[RequestRecord]:
    """A copy of the emulator's request log."""
    return emu.call(lambda: [RequestRecord(**r) for r in emu.state.requests])


def throttles(emu: EmulatorThread, account: str = ACCOUNT) -> int:
    """Calls the emulator answered with a throttling error."""
    return emu.call(emu.state.throttle_count, account)


def seed_images(emu: EmulatorThread, names: list[str], contents: list[bytes]) -> list[str]:
    """Store images as uploads would (no POST), in one hop; return the hashes given."""

    def store() -> list[str]:
        hashes = []
        for name, data in zip(names, contents, strict=True):
            entry = emu.state.upload(ACCOUNT, name, data)
            hashes.append(str(entry["hash"]))
        return hashes

    return emu.call(store)


def write_config(
    path: Path,
    emu: EmulatorThread,
    *,
    manifest: Path,
    folder: Path,
    sync: dict[str, Any] | None = None,
    account: dict[str, Any] | None = None,
) -> Path:
    """A syncd TOML config pointing at the emulator; JSON logs so they can be read back."""
    sections: dict[str, dict[str, Any]] = {
        "graph": {"base_url": emu.base_url, "api_version": "v21.0", "timeout_seconds": 60.0},
        "manifest": {"path": str(manifest)},
        "sync": {"settle_seconds": 0.0, "delete_grace_seconds": 600.0, **(sync or {})},
        "log": {"level": "info", "format": "json"},
    }
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in values.items())
    acct = {"id": ACCOUNT, "folder": str(folder), "rate_per_second": 10000.0, "burst": 10000}
    lines.append("[[accounts]]")
    lines.extend(f"{k} = {_toml(v)}" for k, v in {**acct, **(account or {})}.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment syncd runs with: ours minus SYNCD_*, no proxies, the token set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(name, None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["SYNCD_ACCESS_TOKEN"] = TOKEN
    env.update(extra or {})
    return env
