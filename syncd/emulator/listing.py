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
from collections.abc import Callable, Mapping

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
    acct = state.accounts.get(account)
    order = [] if acct is None else acct.order
    keep = _filter(query)
    page, newer, older = _window(order, keep, limit, query)
    base = str(url.origin())
    body: dict[str, object] = {"data": [image_fields(image, names, base) for image in page]}
    if page:
        body["paging"] = _paging(page, newer, older, url)
    if query.get("summary", "").strip().lower() in _SUMMARY_ON:
        body["summary"] = {"total_count": sum(1 for image in order if keep(image))}
    return body


Keep = Callable[[StoredImage], bool]


def _filter(query: Mapping[str, str]) -> Keep:
    """Which images the query asks for (every parameter is checked before any paging)."""
    hashes = _hashes(query.get("hashes"))
    name = query.get("name")
    min_width = _int_param(query, "minwidth", 0)
    min_height = _int_param(query, "minheight", 0)

    def keep(image: StoredImage) -> bool:
        if hashes is None:
            if image.status == DELETED:
                return False
        elif image.hash not in hashes:
            return False  # asked for by hash, a deleted image is still shown, as DELETED
        if name is not None and image.name != name:
            return False
        return image.info.width >= min_width and image.info.height >= min_height

    return keep


def _window(
    order: list[StoredImage], keep: Keep, limit: int, query: Mapping[str, str]
) -> tuple[list[StoredImage], bool, bool]:
    """The page (newest first), and whether kept images exist newer and older than it
    (both False for an empty page, which has no links).

    `order` is the account's creation order (seq ascending). A page costs a bisection and a
    walk of about `limit` images, not a pass over the account: a 100,000-image listing of
    200 pages must not cost the emulator a pass over 100,000 images per page.
    """
    if "before" in query:  # the `limit` kept images just newer than the cursor
        start = bisect.bisect_right(order, _decode_cursor(query["before"]), key=_SEQ)
        taken = _take(order, range(start, len(order)), keep, limit)
        if not taken:
            return [], False, False
        newer_from = taken[-1] + 1
        page = [order[i] for i in reversed(taken)]
        newer = _any(order, range(newer_from, len(order)), keep)
        return page, newer, _any(order, range(start - 1, -1, -1), keep)
    end = len(order)
    if "after" in query:
        end = bisect.bisect_left(order, _decode_cursor(query["after"]), key=_SEQ)
    taken = _take(order, range(end - 1, -1, -1), keep, limit)
    if not taken:
        return [], False, False
    older_from = taken[-1] - 1
    newer = _any(order, range(end, len(order)), keep)
    return [order[i] for i in taken], newer, _any(order, range(older_from, -1, -1), keep)


def _take(order: list[StoredImage], where: range, keep: Keep, limit: int) -> list[int]:
    """The indices of the first `limit` kept images along `where`."""
    taken: list[int] = []
    for i in where:
        if keep(order[i]):
            taken.append(i)
            if len(taken) == limit:
                break
    return taken


def _any(order: list[StoredImage], where: range, keep: Keep) -> bool:
    return any(keep(order[i]) for i in where)


def _paging(page: list[StoredImage], newer: bool, older: bool, url: URL) -> dict[str, object]:
    first, last = page[0].seq, page[-1].seq
    paging: dict[str, object] = {
        "cursors": {"before": _encode_cursor(first), "after": _encode_cursor(last)}
    }
    # The same parameters, cursor swapped. A token that came in the header stays out of it.
    rest = [(k, v) for k, v in url.query.items() if k not in ("after", "before")]
    if older:
        paging["next"] = str(url.with_query([*rest, ("after", _encode_cursor(last))]))
    if newer:
        paging["previous"] = str(url.with_query([*rest, ("before", _encode_cursor(first))]))
    return paging


_SEQ = operator.attrgetter("seq")


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
