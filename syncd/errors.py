"""The one error hierarchy, and the one place Graph API errors are sorted into it.

Every failure a Graph call can produce is one of four kinds, which decide what happens next:
transient (retry with backoff), throttled (pause the account, then retry), permanent (mark that
file or image failed, do not retry until it changes), auth (stop the account, exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

THROTTLE_CODES = frozenset({4, 17, 32, 613}) | frozenset(range(80000, 80015))
TRANSIENT_CODES = frozenset({1, 2})
AUTH_CODES = frozenset({190}) | frozenset(range(200, 300))


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""


class ConfigError(SyncdError):
    """Bad usage or configuration: exit 2, nothing touched. The message names the key."""


class ManifestError(SyncdError):
    """The manifest cannot be opened, read or written."""


class GraphError(SyncdError):
    """A Graph API call failed. `code`/`subcode` are Meta's, when the answer had them."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.status = status

    @property
    def reason(self) -> str:
        """A short reason for logs and the manifest."""
        tag = f"code {self.code}" if self.code is not None else f"http {self.status}"
        if self.subcode:
            tag += f"/{self.subcode}"
        return f"{self.message} ({tag})"


class TransientError(GraphError):
    """Network error, 5xx, code 1 or 2, or `is_transient`: retry with backoff."""


class ThrottledError(GraphError):
    """The account (or app) is rate limited: pause it for `retry_after` seconds, then retry."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PermanentError(GraphError):
    """The request itself is wrong (invalid image, bad parameter): retrying will not help."""


class AuthError(GraphError):
    """Token invalid or expired (190) or permission denied (200-299): stop the account."""


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The fields of a Graph error body that matter for classification."""

    message: str
    code: int | None
    subcode: int | None
    is_transient: bool


def parse_error_body(payload: object) -> ErrorBody | None:
    """Read `{"error": {...}}`; None when the payload is not a Graph error at all."""
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if not isinstance(err, dict):
        return None
    message = err.get("message")
    code = err.get("code")
    subcode = err.get("error_subcode")
    return ErrorBody(
        message=message if isinstance(message, str) else "unknown Graph error",
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        subcode=subcode if isinstance(subcode, int) and not isinstance(subcode, bool) else None,
        is_transient=err.get("is_transient") is True,
    )


def classify(status: int, body: ErrorBody | None, retry_after: float | None = None) -> GraphError:
    """Map an HTTP status and a Graph error body to the error kind that decides what happens."""
    if body is None:
        message = f"HTTP {status} without a Graph error body"
        if status == 429:
            return ThrottledError(message, status=status, retry_after=retry_after)
        # 401/403 without Meta's error body come from something in between (a proxy, a
        # firewall, a captive portal), not from the Graph API refusing the token: stopping the
        # account as if the token were bad (exit 3) would send the user after the wrong cause.
        if status >= 500 or status in (401, 403, 408):
            return TransientError(message, status=status)
        return PermanentError(message, status=status)
    kw: dict[str, Any] = {"code": body.code, "subcode": body.subcode, "status": status}
    code = body.code
    if code in THROTTLE_CODES or status == 429:
        return ThrottledError(body.message, retry_after=retry_after, **kw)
    if code in AUTH_CODES:
        return AuthError(body.message, **kw)
    if body.is_transient or code in TRANSIENT_CODES or status >= 500:
        return TransientError(body.message, **kw)
    return PermanentError(body.message, **kw)
