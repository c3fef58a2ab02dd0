"""Reading a Graph request: its parameters (query and form body), file parts and token.

Meta takes parameters from the query string and from a urlencoded or multipart body alike,
and a token from the `Authorization` header or an `access_token` parameter. The emulator does
the same, but remembers where the token came from so tests can assert it never sat in a URL.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from hashlib import sha256

from aiohttp import hdrs, web
from multidict import MultiDict

from syncd.emulator import errors, multipart

_AUTH_SCHEMES = ("bearer", "oauth")


@dataclass(frozen=True, slots=True)
class FilePart:
    """One multipart part that carried a filename: one image to upload."""

    filename: str
    data: bytes  # at most max_image_bytes + 1 bytes are kept: enough to know it is too big


@dataclass
class GraphRequest:
    """The parts of a Graph request the routes need."""

    params: MultiDict[str] = field(default_factory=MultiDict)
    files: list[FilePart] = field(default_factory=list)
    token: str | None = None
    token_source: str | None = None  # "header" | "query" | "body"


async def read_graph_request(request: web.Request, max_bytes: int) -> GraphRequest:
    """Parameters from the query and body (query first), files, and the token."""
    parsed = GraphRequest(params=MultiDict(request.query))
    try:
        await _read_body(request, parsed, max_bytes)
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.invalid_parameter("Request body too large", 1487197) from exc
    except ValueError as exc:  # malformed multipart, bad charset, undecodable text
        raise errors.invalid_parameter(f"Could not read the request body: {exc}") from exc
    parsed.token, parsed.token_source = _find_token(request, parsed.params)
    return parsed


def token_in_url(request: web.Request) -> bool:
    """Whether the request carried `access_token` in its URL (syncd never should)."""
    return "access_token" in request.query


async def _read_body(request: web.Request, parsed: GraphRequest, max_bytes: int) -> None:
    media_type = _media_type(request.headers.get(hdrs.CONTENT_TYPE, ""))
    if media_type == "multipart/form-data":
        await _read_multipart(request, parsed, max_bytes)
    elif media_type == "application/x-www-form-urlencoded":
        for key, value in (await request.post()).items():
            if isinstance(value, str):
                parsed.params.add(key, value)


def _media_type(header: str) -> str:
    """The media type of a Content-Type header, lower case, parameters dropped.

    `request.content_type` parses the whole header with the `email` package, which cost more
    than a third of the emulator's time per upload; this is all the emulator needs of it.
    """
    return header.partition(";")[0].strip().lower()


async def _read_multipart(request: web.Request, parsed: GraphRequest, max_bytes: int) -> None:
    boundary = multipart.boundary_of(request.headers.get(hdrs.CONTENT_TYPE, ""))
    for part, charset in multipart.form_fields(await request.read(), boundary):
        if part.filename is not None:
            # At most max_bytes + 1 bytes are kept: enough to know the image is too big.
            parsed.files.append(FilePart(part.filename, part.content[: max_bytes + 1]))
        elif part.name is not None:
            parsed.params.add(part.name, multipart.field_text(part, charset))


def _find_token(request: web.Request, params: MultiDict[str]) -> tuple[str | None, str | None]:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() in _AUTH_SCHEMES and value.strip():
        return value.strip(), "header"
    if request.query.get("access_token"):
        return request.query["access_token"], "query"
    if params.get("access_token"):
        return params["access_token"], "body"
    return None, None


def appsecret_proof(app_secret: str, token: str) -> str:
    """HMAC-SHA256 of the token keyed by the app secret, hex: what Meta checks."""
    return hmac.new(app_secret.encode(), token.encode(), sha256).hexdigest()


def check_appsecret_proof(app_secret: str | None, token: str, params: MultiDict[str]) -> None:
    """Refuse the call (code 100) when a secret is configured and the proof is missing/wrong."""
    if app_secret is None:
        return
    given = params.get("appsecret_proof", "")
    if not hmac.compare_digest(given.encode(), appsecret_proof(app_secret, token).encode()):
        raise errors.bad_appsecret_proof()
