"""Shared fixtures: the bundled emulator on 127.0.0.1, config files, syncd as a subprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from syncd.config import parse_config
from syncd.emulator import EmulatorThread, Faults
from syncd.engine import PassOptions, PassResult, Runtime, sync_account
from syncd.secrets import Secrets, Token

TOKEN = "EAAB-test-token-Zx9Q7-do-not-leak"
ACCOUNT = "1234567890"
ACCOUNT_B = "2222222222"


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        yield emu


@dataclass
class Run:
    """A finished syncd process."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (stdout off a terminal)."""
        out = []
        for line in self.output.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


@dataclass
class SyncEnv:
    """One test's world: folders, a config file, a manifest, the emulator."""

    tmp: Path
    emu: EmulatorThread
    token: str = TOKEN
    sync: dict[str, Any] = field(default_factory=dict)
    accounts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.tmp / "state" / "manifest.sqlite3"

    @property
    def config_path(self) -> Path:
        return self.tmp / "syncd.toml"

    def folder(self, account: str = ACCOUNT) -> Path:
        for acct in self.accounts:
            if acct["id"] == account:
                return Path(acct["folder"])
        raise KeyError(account)

    def add_account(self, account: str, **kw: Any) -> Path:
        folder = self.tmp / f"share-{account}"
        folder.mkdir(exist_ok=True)
        self.accounts.append(
            {"id": account, "folder": str(folder), "rate_per_second": 50.0, "burst": 20, **kw}
        )
        return folder

    def write_config(self) -> Path:
        sync = {
            "workers": 4,
            "settle_seconds": 0.0,
            "delete_grace_seconds": 0.0,
            "max_delete_fraction": 1.0,
            **self.sync,
        }
        lines = [
            "[graph]",
            f'base_url = "{self.emu.base_url}"',
            'api_version = "v21.0"',
            "timeout_seconds = 10.0",
            "[manifest]",
            f'path = "{self.manifest}"',
            "[sync]",
            *(f"{k} = {_toml(v)}" for k, v in sync.items()),
        ]
        for acct in self.accounts:
            lines.append("[[accounts]]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in acct.items())
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def run(self, *args: str, timeout: float = 60, token: str | None = None) -> Run:
        self.write_config()
        return run_syncd(
            ["--config", str(self.config_path), *args],
            self.token if token is None else token,
            timeout,
        )

    def reconcile(self, *args: str, timeout: float = 60) -> Run:
        return self.run("--reconcile", *args, timeout=timeout)

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        assert result.code == 0, result.output
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    def images(self, account: str = ACCOUNT, include_deleted: bool = False) -> list[dict[str, Any]]:
        imgs: list[dict[str, Any]] = self.emu.call(self.emu.state.images, account, include_deleted)
        return imgs

    def requests(
        self, method: str | None = None, account: str | None = None
    ) -> list[dict[str, Any]]:
        reqs: list[dict[str, Any]] = self.emu.call(
            lambda: [dict(r) for r in self.emu.state.requests]
        )
        return [
            r
            for r in reqs
            if (method is None or r["method"] == method)
            and (account is None or r["account"] == account)
        ]

    def sql(self, query: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.manifest)
        try:
            with conn:
                return conn.execute(query, args).fetchall()
        finally:
            conn.close()


def engine_pass(env: SyncEnv, opts: PassOptions, **sync: Any) -> PassResult:
    """One engine pass for the env's first account in this process (what `--reconcile` runs
    per account), against the env's emulator; `sync` overrides keys of [sync]."""
    config = parse_config(
        {
            "graph": {"base_url": env.emu.base_url, "timeout_seconds": 10.0},
            "manifest": {"path": str(env.manifest)},
            "sync": {
                "settle_seconds": 0.0,
                "delete_grace_seconds": 0.0,
                "max_delete_fraction": 1.0,
                **sync,
            },
            "accounts": [
                {"id": ACCOUNT, "folder": str(env.folder()), "rate_per_second": 100.0, "burst": 50}
            ],
        }
    )

    async def run() -> PassResult:
        async with Runtime.open(config, Secrets(token=Token(TOKEN))) as rt:
            return await asyncio.wait_for(sync_account(rt, config.accounts[0], opts), 40)

    return asyncio.run(run())


def set_tokens(emu: EmulatorThread, valid: set[str]) -> None:
    """Only these tokens are valid from now on."""

    def apply() -> None:
        emu.state.config.valid_tokens = frozenset(valid)

    emu.call(apply)


def set_faults(emu: EmulatorThread, **changes: Any) -> None:
    """Change the emulator's fault injection (re-seeded, so runs repeat)."""

    def apply() -> None:
        faults: Faults = dataclasses.replace(emu.state.config.faults, **changes)
        emu.state.config.faults = faults
        emu.state.faults.configure(faults)

    emu.call(apply)


def throttle(emu: EmulatorThread, account: str, seconds: float) -> None:
    """A throttling storm: every call for the account is answered 80004 for `seconds`."""

    def apply() -> None:
        storms = dict(emu.state.config.faults.throttle_accounts)
        storms[account] = emu.state.clock() + seconds
        faults = dataclasses.replace(emu.state.config.faults, throttle_accounts=storms)
        emu.state.config.faults = faults
        emu.state.faults.faults = faults  # keep the seeded sequence going

    emu.call(apply)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def run_syncd(
    args: Sequence[str], token: str | None, timeout: float = 60, env: dict[str, str] | None = None
) -> Run:
    """syncd as a user runs it: a subprocess, no terminal, the token in the environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    full_env.pop("CREDENTIALS_DIRECTORY", None)
    full_env["PYTHONWARNINGS"] = "error"
    if token is not None:
        full_env["SYNCD_ACCESS_TOKEN"] = token
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def env(tmp_path: Path, emulator: EmulatorThread) -> SyncEnv:
    world = SyncEnv(tmp_path, emulator)
    world.add_account(ACCOUNT)
    return world
