"""The reading side: `GET /act_{id}` and `GET /act_{id}/adimages` with filters and paging.

Images are listed newest first. Cursors are opaque strings naming an image's place in its
account's creation order, so a page boundary stays put while images are added or deleted
during a walk: every image present throughout the walk is seen exactly once.
"""

from __future__ import annotations

import binascii
import bisect
import json
import operator
from base64 import b64decode, b64encode
from collections.abc import Mapping

from yarl import URL

from syncd.emulator import errors
from syncd.emulator.config import EmulatorConfig
from syncd.emulator.nodes import (
    ACCOUNT_DEFAULT_FIELDS,
    DELETED,
    IMAGE_DEFAULT_FIELDS,
    StoredImage,
    account_fields,
    image_fields,
    parse_fields,
)
from syncd.emulator.state import EmulatorState

_SUMMARY_ON = frozenset({"true", "1", "total_count"})


def read_account(account: str, query: Mapping[str, str]) -> dict[str, object]:
    """The ad account node, honouring `fields`."""
    names = parse_fields(query.get("fields"), ACCOUNT_DEFAULT_FIELDS, "AdAccount")
    return account_fields(account, names)


def list_images(
    state: EmulatorState, account: str, query: Mapping[str, str], url: URL
) -> dict[str, object]:
    """One page of the account's images; `url` (absolute) is the request's, for `next`."""
    names = parse_fields(query.get("fields"), IMAGE_DEFAULT_FIELDS, "AdImage")
    limit = _limit(query.get("limit"), state.config)
    matching = _matching(state, account, query)
    page = _page(matching, limit, query)
    base = str(url.origin())
    body: dict[str, object] = {"data": [image_fields(image, names, base) for image in page]}
    if page:
        body["paging"] = _paging(matching, page, url)
    if query.get("summary", "").strip().lower() in _SUMMARY_ON:
        body["summary"] = {"total_count": len(matching)}
    return body


def _matching(state: EmulatorState, account: str, query: Mapping[str, str]) -> list[StoredImage]:
    """The filtered images, newest first."""
    acct = state.accounts.get(account)
    # Images are stored in creation order, so this sort is one linear pass (Timsort runs),
    # not n log n per page: a 100,000-image listing must not cost the emulator minutes.
    images = [] if acct is None else sorted(acct.images.values(), key=_SEQ, reverse=True)
    hashes = _hashes(query.get("hashes"))
    if hashes is None:
        images = [image for image in images if image.status != DELETED]
    else:
        # Asked for by hash, a deleted image is still shown, with status DELETED.
        images = [image for image in images if image.hash in hashes]
    if "name" in query:
        images = [image for image in images if image.name == query["name"]]
    min_width = _int_param(query, "minwidth", 0)
    min_height = _int_param(query, "minheight", 0)
    return [i for i in images if i.info.width >= min_width and i.info.height >= min_height]


def _page(matching: list[StoredImage], limit: int, query: Mapping[str, str]) -> list[StoredImage]:
    # `matching` is newest first (seq descending): cursors are found by bisection.
    if "after" in query:
        after = _decode_cursor(query["after"])
        start = bisect.bisect_right(matching, -after, key=_NEG_SEQ)
        return matching[start : start + limit]
    if "before" in query:
        before = _decode_cursor(query["before"])
        end = bisect.bisect_left(matching, -before, key=_NEG_SEQ)
        return matching[max(0, end - limit) : end]
    return matching[:limit]


def _paging(matching: list[StoredImage], page: list[StoredImage], url: URL) -> dict[str, object]:
    first, last = page[0].seq, page[-1].seq
    paging: dict[str, object] = {
        "cursors": {"before": _encode_cursor(first), "after": _encode_cursor(last)}
    }
    # The same parameters, cursor swapped. A token that came in the header stays out of it.
    rest = [(k, v) for k, v in url.query.items() if k not in ("after", "before")]
    if matching[-1].seq < last:  # newest first: the oldest is last
        paging["next"] = str(url.with_query([*rest, ("after", _encode_cursor(last))]))
    if matching[0].seq > first:
        paging["previous"] = str(url.with_query([*rest, ("before", _encode_cursor(first))]))
    return paging


_SEQ = operator.attrgetter("seq")


def _NEG_SEQ(image: StoredImage) -> int:
    return -image.seq


def _encode_cursor(seq: int) -> str:
    return b64encode(f"emulator-image:{seq}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        text = b64decode(cursor, validate=True).decode()
        prefix, _, number = text.partition(":")
        if prefix == "emulator-image" and number.isdigit():
            return int(number)
    except (binascii.Error, UnicodeDecodeError):
        pass
    raise errors.invalid_parameter("Invalid cursor")


def _hashes(raw: str | None) -> set[str] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise errors.invalid_parameter('param hashes must be a JSON array of strings: ["h1","h2"]')
    return set(value)


def _limit(raw: str | None, config: EmulatorConfig) -> int:
    if raw is None:
        return config.default_page_limit
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise errors.invalid_parameter("param limit must be a positive integer")
    return min(limit, config.max_page_limit)  # a maximum, not a promise


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise errors.invalid_parameter(f"param {name} must be an integer") from None
