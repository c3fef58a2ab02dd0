"""The access token and app secret: where they are found, and how they are kept out of logs.

A secret is held in a `Token`, whose repr is `Token(***)` and which refuses to be pickled,
so printing, logging or serialising a config or a request by accident cannot leak it.
`Redactor` is the second line of defence: the log pipeline passes every line through it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

from syncd.config import GraphConfig
from syncd.errors import ConfigError

# The environment variable that holds each credential, by its systemd credential name.
ENV_VARIABLES = {"access_token": "SYNCD_ACCESS_TOKEN", "app_secret": "SYNCD_APP_SECRET"}
# Real tokens are a few hundred bytes; a bigger "token file" is almost surely the wrong file.
_MAX_SECRET_BYTES = 64 * 1024
_NOT_FOUND = (
    "config error: no access token: set SYNCD_ACCESS_TOKEN, use LoadCredential=access_token,"
    " or set graph.access_token_file"
)


class Token:
    """A secret string that does not show itself: repr and str are `Token(***)`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Token value must be a str")
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it (the HTTP header)."""
        return self._value

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Token):
            return NotImplemented
        # Constant time, so a comparison cannot be timed to guess the secret.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Token cannot be pickled: that would write the secret out")

    # A Token is immutable, so a copy is the token itself; this keeps dataclasses.asdict
    # and copy.deepcopy of a config working without going through pickling.
    def __copy__(self) -> Token:
        return self

    def __deepcopy__(self, memo: object) -> Token:
        return self


def appsecret_proof(token: Token, app_secret: Token) -> str:
    """Meta's `appsecret_proof`: hex HMAC-SHA256 of the token, keyed by the app secret."""
    key, message = app_secret.reveal().encode(), token.reveal().encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secrets found by `load_secrets`, and warnings for the caller to log."""

    token: Token
    app_secret: Token | None = None
    warnings: tuple[str, ...] = ()

    def proof(self) -> str | None:
        """The `appsecret_proof` every call carries, or None without an app secret."""
        return None if self.app_secret is None else appsecret_proof(self.token, self.app_secret)

    def redactor(self) -> Redactor:
        """A Redactor that knows the token, the app secret and the proof."""
        return Redactor(*(s for s in (self.token, self.app_secret) if s is not None))


def load_secrets(graph: GraphConfig, environ: Mapping[str, str]) -> Secrets:
    """Find the token (required) and the app secret (optional); first source found wins.

    Order: the environment variable, `$CREDENTIALS_DIRECTORY/<name>` (systemd
    `LoadCredential=`), then the file named in `[graph]`. Errors name the source, never the
    secret. Warnings (a configured secret file others can read) are returned, not logged,
    because logging is not set up yet when secrets are loaded.
    """
    warnings: list[str] = []
    token = _find("access_token", graph.access_token_file, environ, warnings)
    if token is None:
        raise ConfigError(_NOT_FOUND)
    app_secret = _find("app_secret", graph.app_secret_file, environ, warnings)
    return Secrets(token=token, app_secret=app_secret, warnings=tuple(warnings))


def _find(
    credential: str, file: Path | None, environ: Mapping[str, str], warnings: list[str]
) -> Token | None:
    env = ENV_VARIABLES[credential]
    if env in environ:
        return _checked(environ[env], env)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / credential
        # systemd may hand the unit other credentials but not this one: fall through.
        if os.path.lexists(path):
            # No permission warning: systemd owns that directory and its modes.
            label = f"$CREDENTIALS_DIRECTORY/{credential}"
            return _checked(_read(path, label)[0], f"{label} ({path})")
    if file is None:
        return None
    label = f"graph.{credential}_file"
    text, mode = _read(file, label)
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"{label}: {file} is readable by other users (mode {stat.S_IMODE(mode):04o});"
            f" run chmod 600 {file}"
        )
    return _checked(text, f"{label} ({file})")


def _read(path: Path, label: str) -> tuple[str, int]:
    """The text and mode of a secret file; errors name the file, never its content."""
    try:
        # O_NONBLOCK: a FIFO in place of the file must not hang the daemon at start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        _fail(label, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            _fail(label, f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        _fail(label, f"cannot read {path}: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if len(data) > _MAX_SECRET_BYTES:
        _fail(label, f"{path} is larger than {_MAX_SECRET_BYTES // 1024} KiB; not a secret file")
    try:
        return data.decode("utf-8"), mode
    except UnicodeDecodeError:
        _fail(label, f"{path} is not UTF-8 text")


def _checked(text: str, label: str) -> Token:
    value = text.strip()
    if not value:
        _fail(label, "the secret is empty")
    # Printable ASCII only: whitespace or a control character inside would corrupt the
    # Authorization header (or smuggle a second header into it).
    if not all("!" <= ch <= "~" for ch in value):
        _fail(label, "the secret contains whitespace, control or non-ASCII characters")
    return Token(value)


def _fail(label: str, message: str) -> NoReturn:
    raise ConfigError(f"config error: {label}: {message}")


class Redactor:
    """Replaces every registered secret, and each `appsecret_proof` of two of them, by ***.

    Thread-safe: `add` builds a new pattern and swaps it in, `redact` reads it once.
    """

    def __init__(self, *secrets: str | Token) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | Token) -> None:
        """Register one more secret; empty strings are ignored (they would match anywhere)."""
        value = secret.reveal() if isinstance(secret, Token) else secret
        if not value:
            return
        with self._lock:
            if value not in self._secrets:
                self._secrets = (*self._secrets, value)
                self._pattern = _pattern(self._secrets)

    def redact(self, text: str) -> str:
        """`text` with every known secret replaced by ***."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub("***", text)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str]:
    forms = set(secrets)
    # A secret may appear URL-encoded (a logged query string) rather than as itself.
    forms.update(quote(secret, safe="") for secret in secrets)
    # Any two secrets may be an (app secret, token) pair: hide the proof they make too.
    forms.update(
        appsecret_proof(Token(message), Token(key))
        for key in secrets
        for message in secrets
        if key != message
    )
    # Longest first, so a secret that contains another is replaced whole.
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(form) for form in ordered))
