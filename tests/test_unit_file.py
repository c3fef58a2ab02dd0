"""The systemd unit keeps the contract: notify, restarts, credential, state, hardening."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "syncd.service"
MAX_EXPOSURE = 1.5

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A tiny systemd unit parser: sections, repeated keys kept in order, `\\` continuations.

    configparser will not do: systemd allows (and means something by) repeated keys.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise ValueError(f"not a unit file line: {raw!r}")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    """The effective value of a single-valued key: systemd takes the last assignment."""
    assert key in service, f"{key}= is missing"
    return service[key][-1]


def seconds(span: str) -> float:
    """A systemd time span such as "60s", "1min 30s" or "90" (seconds) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)\s*([a-z]*)", span):
        total += float(number) * units[unit or "s"]
    return total


def test_parser_keeps_repeats_and_joins_continuations() -> None:
    unit = parse_unit("# c\n[Service]\nA=1\nA=2 \\\n  3\n; c\n[Install]\nB = x\n")
    assert unit == {"Service": {"A": ["1", "2 3"]}, "Install": {"B": ["x"]}}
    with pytest.raises(ValueError, match="not a unit file line"):
        parse_unit("Key=before any section\n")


def test_type_notify_and_watchdog(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert seconds(one(service, "WatchdogSec")) > 0


def test_exec_lines(service: dict[str, list[str]]) -> None:
    assert "--config /etc/syncd/syncd.toml" in one(service, "ExecStart")
    assert "-HUP $MAINPID" in one(service, "ExecReload")


def test_restart_policy(service: dict[str, list[str]]) -> None:
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "RestartSec")) >= 1
    prevented = {code for line in service["RestartPreventExitStatus"] for code in line.split()}
    assert {"2", "3"} <= prevented
    # The drain must fit in the stop timeout (sync.drain_seconds defaults to 30).
    assert seconds(one(service, "TimeoutStopSec")) > 30


def test_token_comes_as_a_credential(service: dict[str, list[str]]) -> None:
    assert any(v.startswith("access_token:/") for v in service["LoadCredential"])
    assert not any("TOKEN" in v for v in service.get("Environment", []))


def test_state_and_identity(service: dict[str, list[str]]) -> None:
    assert one(service, "StateDirectory") == "syncd"
    dynamic = service.get("DynamicUser", ["no"])[-1] == "yes"
    user = service.get("User", [""])[-1]
    assert dynamic or user not in ("", "root", "0")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("UMask", "0077"),
    ],
)
def test_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    assert one(service, key) == value


def test_install_section() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(
        [analyze, *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_security_exposure_is_low() -> None:
    result = run_analyze("security", "--offline=true", str(UNIT))
    match = re.search(r"Overall exposure level for syncd\.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_verify_knows_every_key(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists; syncd is not installed here, so a copy
    # runs /bin/true instead. Only unknown keys and bad values are of interest.
    copy = tmp_path / "syncd.service"
    text = UNIT.read_text(encoding="utf-8")
    copy.write_text(text.replace("ExecStart=/usr/local/bin/syncd", "ExecStart=/bin/true"))
    result = run_analyze("verify", str(copy))
    problems = [
        line
        for line in result.stderr.splitlines()
        if "syncd.service" in line and re.search(r"unknown|invalid|failed to parse", line, re.I)
    ]
    assert problems == []
