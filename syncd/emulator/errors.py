"""Graph API error answers, shaped like Meta's: `{"error": {"message", "type", "code", ...}}`.

Every refusal the emulator gives is a `GraphApiError` raised from wherever it is detected and
turned into a response in one place (`app.py`), so the body shape is the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.emulator.images import InvalidImage

OAUTH = "OAuthException"
METHOD = "GraphMethodException"

THROTTLE_MESSAGE = (
    "(#80004) There have been too many calls to this ad-account. Wait a bit and try again. "
    "For more info, please refer to "
    "https://developers.facebook.com/docs/graph-api/overview/rate-limiting#ads-management."
)


@dataclass
class GraphApiError(Exception):
    """One Graph error answer: HTTP status plus the fields of Meta's error object."""

    code: int
    message: str
    status: int = 400
    subcode: int | None = None
    type: str = OAUTH
    transient: bool = False
    user_title: str | None = None
    user_msg: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self, fbtrace_id: str) -> dict[str, object]:
        """The JSON body Meta would send."""
        err: dict[str, object] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        err["is_transient"] = self.transient
        if self.user_title is not None:
            err["error_user_title"] = self.user_title
        if self.user_msg is not None:
            err["error_user_msg"] = self.user_msg
        err["fbtrace_id"] = fbtrace_id
        return {"error": err}


def missing_token() -> GraphApiError:
    """No token in the header, the query or the body."""
    return GraphApiError(104, "An access token is required to request this resource.")


def invalid_token() -> GraphApiError:
    """A token the emulator was not told to accept."""
    return GraphApiError(190, "Invalid OAuth access token - Cannot parse access token")


def expired_token() -> GraphApiError:
    """A token listed in `expired_tokens`."""
    return GraphApiError(190, "Error validating access token: Session has expired", subcode=463)


def bad_appsecret_proof() -> GraphApiError:
    """`appsecret_proof` missing or wrong while an app secret is configured."""
    return GraphApiError(100, "Invalid appsecret_proof provided in the API argument", type=METHOD)


def permission_denied() -> GraphApiError:
    """The token may not manage this account."""
    return GraphApiError(200, "(#200) Requires ads_management permission to manage the object")


def throttled() -> GraphApiError:
    """The account is over its ads_management score (or in an injected storm)."""
    return GraphApiError(
        80004,
        THROTTLE_MESSAGE,
        subcode=2446079,
        user_title="Ad Account Has Too Many API Calls",
        user_msg="There have been too many calls from this ad-account. Please wait a bit.",
    )


def unsupported(method: str, node: str) -> GraphApiError:
    """A path or method the emulated Graph API does not serve."""
    return GraphApiError(
        100,
        f"Unsupported {method.lower()} request. Object with ID '{node}' does not exist, cannot "
        "be loaded due to missing permissions, or does not support this operation.",
        subcode=33,
        type=METHOD,
    )


def invalid_parameter(detail: str, subcode: int | None = None) -> GraphApiError:
    """Code 100: the request itself is wrong; retrying will not help."""
    return GraphApiError(100, f"(#100) {detail}", subcode=subcode)


def nonexisting_field(name: str, node_type: str) -> GraphApiError:
    """A `fields` entry the node type does not have."""
    return invalid_parameter(
        f"Tried accessing nonexisting field ({name}) on node type ({node_type})"
    )


def image_error(exc: InvalidImage) -> GraphApiError:
    """An upload rejected for its file type, its content or its encoding."""
    return GraphApiError(
        100,
        f"(#100) Invalid parameter: {exc.reason}",
        subcode=exc.subcode,
        user_title=exc.title,
        user_msg=exc.reason,
    )


def transient_error(alternate: int) -> GraphApiError:
    """An injected server-side failure: HTTP 500 code 1 or HTTP 503 code 2, by turns."""
    if alternate % 2 == 0:
        return GraphApiError(1, "An unknown error occurred", status=500, transient=True)
    return GraphApiError(2, "Service temporarily unavailable", status=503, transient=True)
