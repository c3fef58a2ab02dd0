"""The Graph API client: one request in, one result or one classified `GraphError` out.

It knows HTTP and Meta's response shapes, nothing about rate limits or retries (the account
channel adds those). The token only ever travels in the `Authorization` header; error messages
are built from Meta's answer (with any echo of the token, app secret or proof masked) and the
exception type, never from request details, so nothing this module raises can carry the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from sys import intern
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from syncd.errors import (
    GraphError,
    PermanentError,
    TransientError,
    classify,
    parse_error_body,
)
from syncd.models import RemoteImage
from syncd.secrets import Token, appsecret_proof
from syncd.usage import parse_usage

MAX_NAME = 100  # Meta's limit on an image name
HASHES_PER_READ = 50  # hashes per `hashes=` read, to keep URLs short
LIST_PAGE = 500
# Images up to this size go as one buffer: aiohttp warns about bodies given as bytes over
# 1 MiB, and the multipart framing (boundaries, a name of up to 400 bytes) needs room.
INLINE_IMAGE_BYTES = 2**20 - 4096
MAX_BODY = 8 * 1024 * 1024  # a Graph answer bigger than this is a proxy's garbage
LIST_FIELDS = "hash,status"  # all a pass needs to know which images the account still has
CHECK_FIELDS = "hash,status,creatives,is_associated_creatives_in_adgroups"

# What aiohttp refuses in a header (RFC 9110 5.5: no CTLs but HTAB).
_FORBIDDEN_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

HeadersObserver = Callable[[str, Mapping[str, str]], None]


def list_fields(*, names: bool = False, created: bool = False) -> str:
    """The fields a listing asks for. Names show which uploads would adopt an existing image
    (a dry run's plan); names and creation times claim uploads a crash interrupted
    (planner.claim_intents). Without them, 100,000 images cost a third less to list."""
    return (
        LIST_FIELDS + (",name" if names or created else "") + (",created_time" if created else "")
    )


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What an upload answered: the hash to record, and the name Meta stored."""

    hash: str
    name: str


def upload_name(path: str) -> str:
    """The filename sent for a file: its base name, printable, at most 100 characters.

    The extension is kept because Meta rejects names without one; an over-long stem is cut.
    """
    base = path.rsplit("/", 1)[-1]
    clean = "".join(
        "_" if (0xD800 <= ord(ch) <= 0xDFFF or not ch.isprintable() or ch in '"\\') else ch
        for ch in base
    )
    if len(clean) <= MAX_NAME:
        return clean
    stem, dot, ext = clean.rpartition(".")
    if not dot or len(ext) >= MAX_NAME - 1:
        return clean[:MAX_NAME]
    return stem[: MAX_NAME - len(ext) - 1] + "." + ext


class GraphClient:
    """Calls the adimages edge of one Graph API endpoint with one token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_version: str,
        token: Token,
        app_secret: Token | None = None,
        timeout: float = 60.0,
        on_headers: HeadersObserver | None = None,
    ) -> None:
        self._session = session
        self._root = f"{base_url.rstrip('/')}/{api_version}"
        self._headers = {"Authorization": f"Bearer {token.reveal()}"}
        self._proof = appsecret_proof(token, app_secret) if app_secret else None
        # Meta has echoed a malformed token in its error message; such text must not carry it
        # on into exceptions and logs.
        self._secrets = tuple(
            s for s in (token.reveal(), app_secret and app_secret.reveal(), self._proof) if s
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 15.0))
        self._on_headers = on_headers

    async def check_account(self, account: str) -> dict[str, Any]:
        """Read the account node: proves the token works for it before anything else."""
        body = await self._request("GET", account, "", {"fields": "id,account_id,name"})
        return body

    async def upload(self, account: str, name: str, data: bytes) -> Uploaded:
        """POST one image as a multipart file part whose filename carries the extension."""
        body = await self._request("POST", account, "/adimages", None, data=_form(name, data))
        return _uploaded_from(body)

    async def list_page(
        self, account: str, after: str | None = None, fields: str = LIST_FIELDS
    ) -> tuple[list[RemoteImage], str | None]:
        """One page of the account's images and the cursor of the next page (None at the end)."""
        params: dict[str, str] = {"fields": fields, "limit": str(LIST_PAGE)}
        if after is not None:
            params["after"] = after
        body = await self._request("GET", account, "/adimages", params)
        return _images_from(body), _next_cursor(body)

    async def read_hashes(
        self, account: str, hashes: Sequence[str], fields: str = CHECK_FIELDS
    ) -> list[RemoteImage]:
        """The named images (at most HASHES_PER_READ); hashes the API does not know are absent."""
        if len(hashes) > HASHES_PER_READ:
            raise ValueError(f"at most {HASHES_PER_READ} hashes per read")
        if not hashes:
            return []  # nothing to ask; `limit=0` would be refused as an invalid parameter
        params = {"fields": fields, "hashes": json.dumps(list(hashes)), "limit": str(len(hashes))}
        body = await self._request("GET", account, "/adimages", params)
        return _images_from(body)

    async def delete_image(self, account: str, image_hash: str) -> None:
        """DELETE by hash; Meta answers `{"success": true}`."""
        body = await self._request("DELETE", account, "/adimages", {"hash": image_hash})
        if body.get("success") is not True:
            raise TransientError("delete answered without success")

    async def _request(
        self,
        method: str,
        account: str,
        edge: str,
        params: Mapping[str, str] | None,
        data: aiohttp.FormData | aiohttp.BytesPayload | None = None,
    ) -> dict[str, Any]:
        url = f"{self._root}/act_{account}{edge}"
        query = dict(params or {})
        if self._proof:
            query["appsecret_proof"] = self._proof
        try:
            async with self._session.request(
                method, url, params=query, data=data, headers=self._headers, timeout=self._timeout
            ) as resp:
                self._observe(account, resp.headers)
                raw = await _read_limited(resp)
                return _decode(resp.status, resp.headers, raw, account, self._secrets)
        except GraphError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The message names the exception type only: aiohttp's own text can quote the
            # request (URL, headers), and a proxy's can quote anything.
            raise TransientError(f"network error: {_describe(exc)}") from None

    def _observe(self, account: str, headers: CIMultiDictProxy[str]) -> None:
        if self._on_headers is not None:
            self._on_headers(account, headers)


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > MAX_BODY:
        raise TransientError(f"answer too large ({declared} bytes)", status=resp.status)
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(65536):
        total += len(chunk)
        if total > MAX_BODY:
            raise TransientError("answer too large", status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    account: str,
    secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """Turn an HTTP answer into a JSON object, or raise the one error it stands for.

    The error message comes from the answer; any of `secrets` in it is masked.
    """
    try:
        payload: object = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        payload = None
    if 200 <= status < 300:
        if isinstance(payload, dict) and "error" not in payload:
            return payload
        if not isinstance(payload, dict):
            # A proxy's page, a truncated body, a bare list: not Meta's answer, so nothing is
            # known about the file; try again later rather than mark it failed for good.
            raise TransientError("answer is not a JSON object", status=status)
    body = parse_error_body(payload)
    if body is not None:
        message = body.message
        for secret in secrets:
            message = message.replace(secret, "***")
        body = dataclasses.replace(body, message=message)
    error = classify(status, body, _retry_after(headers, account))
    raise error


def _retry_after(headers: Mapping[str, str], account: str) -> float | None:
    """How long the API asks us to wait: usage headers first, then `Retry-After`."""
    usage = parse_usage(headers, account)
    if usage.regain_seconds:
        return usage.regain_seconds
    value = headers.get("Retry-After")
    if value:
        try:
            seconds = float(value)
        except ValueError:
            return None
        if 0 <= seconds < 86400:
            return seconds
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} ({os.strerror(exc.errno)})"
    return type(exc).__name__


def _uploaded_from(body: Mapping[str, Any]) -> Uploaded:
    images = body.get("images")
    if not isinstance(images, dict) or len(images) != 1:
        raise TransientError("upload answer has no single image entry")
    # Take the entry, not the key: the key is the part's filename, or "bytes".
    entry = next(iter(images.values()))
    image_hash = entry.get("hash") if isinstance(entry, dict) else None
    if not isinstance(image_hash, str) or not image_hash:
        raise TransientError("upload answer has no hash")
    name = entry.get("name")
    return Uploaded(hash=image_hash, name=name if isinstance(name, str) else "")


def _form(name: str, data: bytes) -> aiohttp.FormData | aiohttp.BytesPayload:
    """The multipart body of one image: a file part whose filename carries the extension.

    Raw UTF-8 filenames (RFC 7578), not aiohttp's default percent-encoding, which Meta would
    store literally as the image name ("caf%C3%A9.jpg"). An image up to `INLINE_IMAGE_BYTES`
    goes as one buffer built here, sent in one write: aiohttp's multipart writer cost a third
    of an upload's client CPU, in five writes per image. Bigger images go through that writer
    from a BytesIO, in chunks and without a second copy (the daemon's run to 30 MB).
    """
    if len(data) > INLINE_IMAGE_BYTES:
        form = aiohttp.FormData(quote_fields=False)
        form.add_field(
            "filename", io.BytesIO(data), filename=name, content_type="application/octet-stream"
        )
        return form
    boundary = uuid.uuid4().hex
    return aiohttp.BytesPayload(
        multipart_body(name, data, boundary),
        content_type=f"multipart/form-data; boundary={boundary}",
    )


def multipart_body(name: str, data: bytes, boundary: str) -> bytes:
    """`multipart/form-data` with one file part `filename`; the caller sets the boundary.

    The same bytes aiohttp's writer sends with `quote_fields=False` (upload names have no
    quotes, backslashes or control characters, see `upload_name`; quotes and backslashes are
    escaped anyway, and control characters refused, as aiohttp does: a CR LF in a name would
    otherwise start a header of the name's choosing).
    """
    if _FORBIDDEN_IN_HEADER.search(name):
        raise ValueError("a control character in an upload name (it would break the header)")
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    head = (
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: form-data; name="filename"; filename="{quoted}"\r\n\r\n'
    )
    return b"".join((head.encode(), data, f"\r\n--{boundary}--\r\n".encode()))


def _images_from(body: Mapping[str, Any]) -> list[RemoteImage]:
    data = body.get("data")
    if not isinstance(data, list):
        raise PermanentError("listing answer has no data list")
    return [image for item in data if (image := _image(item)) is not None]


def _image(item: object) -> RemoteImage | None:
    if not isinstance(item, dict):
        return None
    image_hash = item.get("hash")
    if not isinstance(image_hash, str) or not image_hash:
        return None
    name, status = _text(item.get("name")), _text(item.get("status")) or "ACTIVE"
    creatives, in_adgroups = item.get("creatives"), item.get("is_associated_creatives_in_adgroups")
    if creatives is None and in_adgroups is None:
        # A listing page (500 of these per call, every pass): no creatives to read. Interned,
        # the hash is the manifest's own string and "ACTIVE" is one string, not 100,000.
        created = _text(item.get("created_time"))
        return RemoteImage(intern(image_hash), name, intern(status), (), False, created)
    creative_ids, readable = _creatives(creatives)
    return RemoteImage(
        hash=image_hash,
        name=name,
        status=status,
        creatives=creative_ids,
        in_adgroups=in_adgroups is True,
        created_time=_text(item.get("created_time")),
        # Only a JSON boolean is an answer: `1 in (True, False)` holds in Python, and 1 is
        # not `True`, so an integer flag would have read as "not in ad groups".
        uncertain=not readable or not (in_adgroups is None or isinstance(in_adgroups, bool)),
    )


def _creatives(value: object) -> tuple[tuple[str, ...], bool]:
    """Creative ids, and whether the answer could be read at all.

    Absent means none (Graph omits empty fields); a list of ids, or an edge-shaped
    `{"data": [...]}`, is read; anything else is unreadable, which the deletion check treats
    as "in use" so a garbled answer can never cause a deletion.
    """
    if value is None:
        return (), True
    if isinstance(value, dict):
        value = value.get("data")
    if not isinstance(value, list):
        return (), False
    ids: list[str] = []
    for entry in value:
        if isinstance(entry, dict):
            entry = entry.get("id")
        if isinstance(entry, bool) or not isinstance(entry, str | int):
            return tuple(ids), False
        ids.append(str(entry))
    return tuple(ids), True


def _text(value: object) -> str:
    return value if type(value) is str else ""  # exactly str: a subclass is not a JSON string


def _next_cursor(body: Mapping[str, Any]) -> str | None:
    paging = body.get("paging")
    if not isinstance(paging, dict) or not paging.get("next"):
        return None
    cursors = paging.get("cursors")
    after = cursors.get("after") if isinstance(cursors, dict) else None
    return after if isinstance(after, str) and after else None
