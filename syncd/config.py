"""Load and validate syncd's TOML configuration into frozen, typed dataclasses.

Every problem becomes one `ConfigError` whose single line names the offending key in the
dotted form the user wrote (`sync.workers`, `accounts[1].folder`), so the CLI can print it
and exit 2 before anything is touched. Each dataclass field carries its own rule (its
`metadata["rule"]`), so a key's type, default and validation are written down in one place.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NoReturn, cast, get_args
from urllib.parse import urlsplit

from syncd.errors import ConfigError

Observer = Literal["auto", "native", "polling"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

# A rule turns a raw TOML value into the field's typed value, or raises ConfigError naming
# `key`. Rules come first in this module because every dataclass field names its rule.
Rule = Callable[[Any, str], Any]


def _fail(key: str, message: str) -> NoReturn:
    raise ConfigError(f"config error: {key}: {message}")


def _describe(value: object) -> str:
    """A short, single-line rendering of a bad value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping | list | tuple):
        return "a table" if isinstance(value, Mapping) else "an array"
    return f"a {type(value).__name__}"  # TOML dates and times: "a datetime", "a time"


def _integer(low: int, high: int | None = None) -> Rule:
    want = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def check(value: Any, key: str) -> int:
        # bool is an int subclass in Python, but `workers = true` is a mistake, not 1.
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if not ok or (high is not None and value > high):
            _fail(key, f"expected {want}, got {_describe(value)}")
        return cast(int, value)

    return check


def _number(low: float, *, inclusive: bool, high: float | None = None) -> Rule:
    want = f"a number {'>=' if inclusive else '>'} {low:g}"
    want += f" and <= {high:g}" if high is not None else ""

    def check(value: Any, key: str) -> float:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        # Huge TOML integers overflow float(); TOML's inf and nan are no durations either.
        number = float(value) if is_number and abs(value) < 1e300 else math.nan
        too_low = number < low if inclusive else number <= low
        if not math.isfinite(number) or too_low or (high is not None and number > high):
            _fail(key, f"expected {want}, got {_describe(value)}")
        return number

    return check


def _choice(options: tuple[str, ...]) -> Rule:
    want = " | ".join(f'"{option}"' for option in options)

    def check(value: Any, key: str) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            _fail(key, f"expected one of {want}, got {_describe(value)}")
        return value.lower()

    return check


def _path(value: Any, key: str) -> Path:
    """A path, `~` expanded; `_fields` resolves a relative one against the config's folder."""
    if not isinstance(value, str) or not value:
        _fail(key, f"expected a path (a non-empty string), got {_describe(value)}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        _fail(key, f"the path contains control characters: {_describe(value)}")
    return _expand(value, key)


def _expand(text: str, key: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:
        _fail(key, "cannot expand ~: the home directory is unknown")


_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)


def _valid_host(host: str) -> bool:
    try:
        return bool(_HOST.fullmatch(host)) or bool(ipaddress.IPv6Address(host))
    except ValueError:
        return False


_URL_WANT = "expected http(s)://host[:port] with no path, query or credentials"


def _base_url(value: Any, key: str) -> str:
    # The value is never echoed: a URL may carry a token, in its userinfo or its query.
    if not isinstance(value, str):
        _fail(key, f"{_URL_WANT}, got {_describe(value)}")
    if "@" in value:
        _fail(key, "must not contain credentials (user:password@); see graph.access_token_file")
    try:
        parts = urlsplit(value)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        _fail(key, f"{_URL_WANT}; it is not a valid URL")
    problems = (
        # urlsplit silently drops tabs and newlines, so the raw text is looked at too.
        (any(ch.isspace() or not ch.isprintable() for ch in value), "it contains whitespace"),
        (parts.scheme not in ("http", "https"), "the scheme must be http or https"),
        (not _valid_host(host), "the host is missing or invalid"),
        (port == 0, "the port must be 1..65535"),
        (parts.path not in ("", "/"), "it has a path"),
        ("?" in value or "#" in value, "it has a query or fragment"),
    )
    for bad, problem in problems:
        if bad:
            _fail(key, f"{_URL_WANT}; {problem}")
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}" + (f":{port}" if port is not None else "")


def _api_version(value: Any, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"v[0-9]+\.[0-9]+", value, re.ASCII):
        _fail(key, f'expected a version like "v21.0", got {_describe(value)}')
    return value


_LISTEN_WANT = 'expected "host:port" like "127.0.0.1:9464" or "[::1]:9464" (port 1..65535)'


def _listen(value: Any, key: str) -> str:
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    # An IPv6 address needs brackets, or its last group would read as the port.
    ok_host = (":" in host) == bracketed and _valid_host(host)
    ok_port = re.fullmatch(r"[0-9]{1,5}", port, re.ASCII) is not None and 0 < int(port) < 65536
    if not (ok_host and ok_port):
        _fail(key, f"{_LISTEN_WANT}, got {_describe(value)}")
    return cast(str, value)


# "act_0123" and "act_123" would name one account twice, so a leading zero is refused.
_ACCOUNT_ID = re.compile(r"(?:act_)?([1-9][0-9]*)", re.ASCII)


def _account_id(value: Any, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**30:
        return str(value)
    match = _ACCOUNT_ID.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        _fail(key, f'expected an ad account id like "1234567890", got {_describe(value)}')
    return match.group(1)


_POSITIVE = {"rule": _number(0, inclusive=False)}
_NON_NEGATIVE = {"rule": _number(0, inclusive=True)}
_PATH = {"rule": _path}


@dataclass(frozen=True, slots=True)
class GraphConfig:
    """Where the Graph API is and how to authenticate against it."""

    base_url: str = field(default="https://graph.facebook.com", metadata={"rule": _base_url})
    api_version: str = field(default="v21.0", metadata={"rule": _api_version})
    access_token_file: Path | None = field(default=None, metadata=_PATH)
    app_secret_file: Path | None = field(default=None, metadata=_PATH)
    timeout_seconds: float = field(default=60.0, metadata=_POSITIVE)


@dataclass(frozen=True, slots=True)
class ManifestConfig:
    """Where the SQLite manifest of uploaded images lives."""

    path: Path = field(default=Path("/var/lib/syncd/manifest.sqlite3"), metadata=_PATH)


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """How the daemon schedules uploads, deletions and rescans."""

    workers: int = field(default=4, metadata={"rule": _integer(1, 256)})
    settle_seconds: float = field(default=2.0, metadata=_NON_NEGATIVE)
    delete_grace_seconds: float = field(default=600.0, metadata=_NON_NEGATIVE)
    rescan_interval_seconds: float = field(default=3600.0, metadata=_POSITIVE)
    observer: Observer = field(default="auto", metadata={"rule": _choice(get_args(Observer))})
    max_delete_fraction: float = field(
        default=0.25, metadata={"rule": _number(0, inclusive=False, high=1)}
    )
    poll_interval_seconds: float = field(default=5.0, metadata=_POSITIVE)
    drain_seconds: float = field(default=30.0, metadata=_NON_NEGATIVE)
    max_attempts: int = field(default=5, metadata={"rule": _integer(1)})


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Optional metrics endpoint; `listen` is "host:port" or "[v6addr]:port", None = off."""

    listen: str | None = field(default=None, metadata={"rule": _listen})


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log verbosity and output format ("auto": console on a terminal, JSON otherwise)."""

    level: LogLevel = field(default="info", metadata={"rule": _choice(get_args(LogLevel))})
    format: LogFormat = field(default="auto", metadata={"rule": _choice(get_args(LogFormat))})


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One ad account and the folder whose images it mirrors."""

    id: str = field(metadata={"rule": _account_id})
    folder: Path = field(metadata=_PATH)
    rate_per_second: float = field(default=2.0, metadata=_POSITIVE)
    # A write (upload or delete) costs 3 tokens: a smaller bucket could never afford one.
    burst: int = field(default=5, metadata={"rule": _integer(3)})

    @property
    def act_id(self) -> str:
        """The account id as the Graph API spells it in paths: `act_<digits>`."""
        return f"act_{self.id}"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; `source` is the file it came from, if any."""

    graph: GraphConfig = field(default_factory=GraphConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    accounts: tuple[AccountConfig, ...] = ()
    source: Path | None = None


def config_path_from(arg: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to use: `--config` wins, else `SYNCD_CONFIG`, else None."""
    if arg is not None:
        if not arg:
            _fail("--config", "expected a file path, got an empty string")
        return _expand(arg, "--config")
    # An empty variable is how people unset things in unit files and shells: treat as unset.
    env = environ.get("SYNCD_CONFIG")
    return _expand(env, "SYNCD_CONFIG") if env else None


def load_config(path: Path) -> Config:
    """Read, parse and validate the TOML file at `path`."""
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"config error: {path}: cannot read: {reason}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, or an integer too long to convert; RecursionError: absurdly
        # nested arrays. Neither is a TOMLDecodeError, and neither may escape as a traceback.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"config error: {path}: not valid TOML: {reason}") from None
    return parse_config(data, source=Path(os.path.abspath(path)))


_SECTIONS = {
    "graph": GraphConfig,
    "manifest": ManifestConfig,
    "sync": SyncConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate already-parsed TOML data; relative paths resolve against `source`'s folder."""
    base = Path(os.path.abspath(source)).parent if source is not None else Path.cwd()
    _reject_unknown(data, "", [*_SECTIONS, "accounts"])
    sections = {
        name: cls(**_fields(data.get(name, {}), name, cls, base)) for name, cls in _SECTIONS.items()
    }
    accounts = _accounts(data.get("accounts"), base)
    return Config(**sections, accounts=accounts, source=source)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def _dotted(prefix: str, name: object) -> str:
    """`name` appended to `prefix`, quoted the TOML way when it is not a bare key."""
    text = name if isinstance(name, str) else str(name)
    part = text if _BARE_KEY.fullmatch(text) else json.dumps(text)
    return f"{prefix}.{part}" if prefix else part


def _reject_unknown(table: Mapping[Any, Any], prefix: str, known: list[str]) -> None:
    for name in table:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {_dotted(prefix, close[0])}?)" if close else ""
            raise ConfigError(f"config error: unknown key {_dotted(prefix, name)}{hint}")


def _fields(table: object, prefix: str, cls: type, base: Path) -> dict[str, Any]:
    """Check the keys present in `table` by their fields' rules; absent keys keep defaults."""
    if not isinstance(table, Mapping):
        _fail(prefix, f"expected a table, got {_describe(table)}")
    spec: dict[str, Field[Any]] = {f.name: f for f in fields(cls)}
    _reject_unknown(table, prefix, list(spec))
    values: dict[str, Any] = {}
    for name, spec_field in spec.items():
        if name in table:
            got = spec_field.metadata["rule"](table[name], f"{prefix}.{name}")
            # Relative paths are taken from the config file's folder, not the daemon's cwd.
            values[name] = Path(os.path.normpath(base / got)) if isinstance(got, Path) else got
        elif spec_field.default is MISSING:
            _fail(f"{prefix}.{name}", "required key is missing")
    return values


def _accounts(value: object, base: Path) -> tuple[AccountConfig, ...]:
    if not isinstance(value, list | tuple) or not value:
        got = "nothing" if value is None else _describe(value)
        _fail("accounts", f"expected one or more [[accounts]] tables, got {got}")
    accounts = tuple(
        AccountConfig(**_fields(item, f"accounts[{i}]", AccountConfig, base))
        for i, item in enumerate(value)
    )
    _check_distinct(accounts)
    return accounts


def _check_distinct(accounts: tuple[AccountConfig, ...]) -> None:
    """No two accounts may share an id, or a folder, or nest one folder in another."""
    resolved = [_resolved(account.folder) for account in accounts]
    for i, account in enumerate(accounts):
        for j, other in enumerate(accounts[:i]):
            if account.id == other.id:
                _fail(f"accounts[{i}].id", f"duplicate of accounts[{j}].id ({other.id})")
            here, there = resolved[i], resolved[j]
            if here == there:
                _fail(f"accounts[{i}].folder", f"same folder as accounts[{j}] ({other.folder})")
            if here.is_relative_to(there) or there.is_relative_to(here):
                relation = "inside" if here.is_relative_to(there) else "contains"
                _fail(
                    f"accounts[{i}].folder",
                    f"{relation} accounts[{j}].folder ({other.folder});"
                    " a file there would belong to two accounts",
                )


def _resolved(path: Path) -> Path:
    """Symlinks followed where possible; folders need not exist (late mounts)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return path
