"""Reading the Graph API usage headers into one utilisation figure and one wait.

Three headers report how close the app and the ad account are to being throttled (see the
Graph facts): `X-Business-Use-Case-Usage`, `X-Ad-Account-Usage` and `X-App-Usage`. They are
JSON put there by a remote party, so nothing in them is trusted: every field that is missing,
of the wrong type, negative, not finite or absurd is ignored on its own, and parsing never
raises.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BUSINESS_HEADER = "x-business-use-case-usage"
ACCOUNT_HEADER = "x-ad-account-usage"
APP_HEADER = "x-app-usage"

_PCT_FIELDS = ("call_count", "total_cputime", "total_time")
# A percentage can legitimately pass 100 (over quota); far past that it is noise.
_MAX_PCT = 1000.0
# No documented block lasts a day; a bigger figure is noise, and would stall the account.
_MAX_REGAIN_SECONDS = 24 * 3600.0
_ADS_MANAGEMENT = "ads_management"


@dataclass(frozen=True)
class Usage:
    """What the usage headers of one response say.

    `util_pct` is the highest utilisation found across the three headers (0..1000), `None` if
    none reported one. `regain_seconds` is how long until access returns, `None` if nothing
    says so.
    """

    util_pct: float | None
    regain_seconds: float | None


def parse_usage(headers: Mapping[str, str], account_id: str) -> Usage:
    """Read the usage headers of one response for ad account `account_id` (with or without
    "act_"). Header names are matched case-insensitively. Never raises."""
    by_name = _lowercase_keys(headers)
    raw = (by_name.get(BUSINESS_HEADER), by_name.get(ACCOUNT_HEADER), by_name.get(APP_HEADER))
    if all(value is None or isinstance(value, str) for value in raw):
        # Consecutive answers mostly carry the very same three headers: parse each text once.
        return _parse_texts(*raw, account_id)
    return _parse(*raw, account_id)


@functools.lru_cache(maxsize=256)
def _parse_texts(business: str | None, account: str | None, app: str | None, acct: str) -> Usage:
    return _parse(business, account, app, acct)


def _parse(business_raw: object, account_raw: object, app_raw: object, account_id: str) -> Usage:
    business = _business_entries(_json_object(business_raw), account_id)
    account = _json_object(account_raw)
    app = _json_object(app_raw)

    pcts = [_pct(entry.get(field)) for entry in business for field in _PCT_FIELDS]
    pcts.append(_pct(account.get("acc_id_util_pct")))
    pcts.extend(_pct(app.get(field)) for field in _PCT_FIELDS)
    util = _max(pcts)

    # The business header's estimate is in minutes; the account header's reset time is in
    # seconds and is sent at any utilisation, so it only means "blocked until" at 100 % or more.
    waits = [_seconds(entry.get("estimated_time_to_regain_access"), 60.0) for entry in business]
    if util is not None and util >= 100.0:
        waits.append(_seconds(account.get("reset_time_duration"), 1.0))
    return Usage(util_pct=util, regain_seconds=_max(waits))


def _lowercase_keys(headers: Mapping[str, str]) -> dict[str, object]:
    try:
        return {k.lower(): v for k, v in headers.items() if isinstance(k, str)}
    except Exception:  # a hostile Mapping; never let usage parsing break a call
        return {}


def _json_object(raw: object) -> dict[str, object]:
    """The header's JSON if it is an object, else an empty one."""
    if not isinstance(raw, str | bytes):
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # malformed, too many digits, or nested too deep
        return {}
    return value if isinstance(value, dict) else {}


def _business_entries(doc: dict[str, object], account_id: str) -> list[dict[str, object]]:
    """The ads_management entries for this account, else those for every business object."""
    target = _digits(account_id)
    own = [
        e for key, value in doc.items() if _digits(key) == target for e in _ads_management(value)
    ]
    return own or [e for value in doc.values() for e in _ads_management(value)]


def _ads_management(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, dict) and e.get("type") == _ADS_MANAGEMENT]


def _digits(account_id: str) -> str:
    return account_id.removeprefix("act_")


def _number(value: object) -> float | None:
    """A finite, non-negative number, or None. Strings and booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too big for a float
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _pct(value: object) -> float | None:
    number = _number(value)
    return None if number is None else min(number, _MAX_PCT)


def _seconds(value: object, unit: float) -> float | None:
    number = _number(value)
    return None if number is None else min(number * unit, _MAX_REGAIN_SECONDS)


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
