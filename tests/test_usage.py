"""Parsing the Graph usage headers: the documented shapes, and garbage that must not hurt."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.usage import Usage, parse_usage

ACCOUNT = "1234567890"


def buc(entries: dict[str, list[dict[str, Any]]]) -> str:
    return json.dumps(entries)


def ads_management(**fields: Any) -> dict[str, Any]:
    return {"type": "ads_management", **fields}


def test_no_headers_say_nothing() -> None:
    assert parse_usage({}, ACCOUNT) == Usage(util_pct=None, regain_seconds=None)


def test_highest_percentage_across_the_three_headers() -> None:
    headers = {
        "X-Business-Use-Case-Usage": buc(
            {ACCOUNT: [ads_management(call_count=12, total_cputime=40, total_time=7)]}
        ),
        "X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 55.5, "reset_time_duration": 30}),
        "X-App-Usage": json.dumps({"call_count": 3, "total_time": 9, "total_cputime": 1}),
    }
    assert parse_usage(headers, ACCOUNT) == Usage(util_pct=55.5, regain_seconds=None)


def test_header_names_are_case_insensitive() -> None:
    headers = {"x-app-usage": json.dumps({"call_count": 80})}
    assert parse_usage(headers, ACCOUNT).util_pct == 80.0
    headers = {"X-APP-USAGE": json.dumps({"total_time": 81})}
    assert parse_usage(headers, ACCOUNT).util_pct == 81.0


def test_regain_estimate_is_in_minutes() -> None:
    headers = {
        "X-Business-Use-Case-Usage": buc(
            {ACCOUNT: [ads_management(call_count=100, estimated_time_to_regain_access=5)]}
        )
    }
    assert parse_usage(headers, ACCOUNT) == Usage(util_pct=100.0, regain_seconds=300.0)


def test_reset_time_counts_only_when_utilisation_reaches_100() -> None:
    low = {"X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 60, "reset_time_duration": 90})}
    assert parse_usage(low, ACCOUNT).regain_seconds is None
    full = {"X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 100, "reset_time_duration": 90})}
    assert parse_usage(full, ACCOUNT).regain_seconds == 90.0


def test_regain_is_the_longest_wait() -> None:
    headers = {
        "X-Business-Use-Case-Usage": buc(
            {ACCOUNT: [ads_management(call_count=100, estimated_time_to_regain_access=1)]}
        ),
        "X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 100, "reset_time_duration": 200}),
    }
    assert parse_usage(headers, ACCOUNT).regain_seconds == 200.0


def test_the_accounts_own_entry_is_preferred() -> None:
    headers = {
        "X-Business-Use-Case-Usage": buc(
            {
                "999": [ads_management(call_count=95, estimated_time_to_regain_access=9)],
                ACCOUNT: [ads_management(call_count=20)],
            }
        )
    }
    assert parse_usage(headers, ACCOUNT) == Usage(util_pct=20.0, regain_seconds=None)
    assert parse_usage(headers, f"act_{ACCOUNT}").util_pct == 20.0


def test_without_an_own_entry_every_ads_management_entry_counts() -> None:
    headers = {
        "X-Business-Use-Case-Usage": buc(
            {
                "111": [ads_management(call_count=30)],
                "222": [ads_management(total_time=70), {"type": "ads_insights", "call_count": 99}],
            }
        )
    }
    assert parse_usage(headers, ACCOUNT).util_pct == 70.0


def test_other_usage_types_do_not_count() -> None:
    headers = {"X-Business-Use-Case-Usage": buc({ACCOUNT: [{"type": "pages", "call_count": 99}]})}
    assert parse_usage(headers, ACCOUNT).util_pct is None


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "[1, 2, 3]",
        '"a string"',
        "null",
        "9" * 5000,  # more digits than int() accepts
        "[" * 100_000,  # nests deeper than the parser can recurse
        '{"acc_id_util_pct": "50"}',
        '{"acc_id_util_pct": -5}',
        '{"acc_id_util_pct": NaN}',
        '{"acc_id_util_pct": Infinity}',
        '{"acc_id_util_pct": true}',
        '{"acc_id_util_pct": [50]}',
        '{"acc_id_util_pct": {"x": 1}}',
    ],
)
def test_garbage_in_a_header_is_ignored(value: str) -> None:
    headers = {"X-Ad-Account-Usage": value, "X-App-Usage": json.dumps({"call_count": 10})}
    assert parse_usage(headers, ACCOUNT) == Usage(util_pct=10.0, regain_seconds=None)


def test_garbage_is_ignored_field_by_field() -> None:
    entry = ads_management(
        call_count="lots", total_cputime=-1, total_time=42, estimated_time_to_regain_access="soon"
    )
    headers = {"X-Business-Use-Case-Usage": buc({ACCOUNT: [entry, "junk", 7]})}  # type: ignore[list-item]
    assert parse_usage(headers, ACCOUNT) == Usage(util_pct=42.0, regain_seconds=None)


def test_huge_values_are_clamped() -> None:
    headers = {
        "X-Business-Use-Case-Usage": buc(
            {ACCOUNT: [ads_management(call_count=1e300, estimated_time_to_regain_access=1e308)]}
        ),
        "X-App-Usage": json.dumps({"call_count": 10**400}),  # too big for a float: ignored
    }
    usage = parse_usage(headers, ACCOUNT)
    assert usage.util_pct == 1000.0
    assert usage.regain_seconds is not None
    assert math.isfinite(usage.regain_seconds)


# -- never raises, whatever arrives ---------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
field_values = json_values | st.sampled_from([0, 50, 99.5, 100, 250, -1, 1e308])
buc_entry = st.fixed_dictionaries(
    {"type": st.sampled_from(["ads_management", "pages", 3])},
    optional={
        "call_count": field_values,
        "total_cputime": field_values,
        "total_time": field_values,
        "estimated_time_to_regain_access": field_values,
    },
)
buc_doc = st.dictionaries(
    st.sampled_from([ACCOUNT, "act_" + ACCOUNT, "42"]) | st.text(max_size=5),
    st.lists(buc_entry | json_values, max_size=3) | json_values,
)
account_doc = st.fixed_dictionaries(
    {}, optional={"acc_id_util_pct": field_values, "reset_time_duration": field_values}
)
app_doc = st.fixed_dictionaries(
    {}, optional={"call_count": field_values, "total_time": field_values}
)


def header_value(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return st.text() | (shaped | json_values).map(json.dumps)


headers_strategy = st.fixed_dictionaries(
    {},
    optional={
        "X-Business-Use-Case-Usage": header_value(buc_doc),
        "x-ad-account-usage": header_value(account_doc),
        "X-App-Usage": header_value(app_doc),
    },
)


@given(headers=headers_strategy, account_id=st.sampled_from([ACCOUNT, "act_" + ACCOUNT, ""]))
def test_parse_usage_never_raises_and_stays_finite(
    headers: dict[str, str], account_id: str
) -> None:
    usage = parse_usage(headers, account_id)
    if usage.util_pct is not None:
        assert 0.0 <= usage.util_pct <= 1000.0
    if usage.regain_seconds is not None:
        assert 0.0 <= usage.regain_seconds < math.inf
