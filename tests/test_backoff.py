"""The retry/backoff policy: pure numbers in, numbers out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.backoff import Backoff, throttle_pause

unit_interval = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def test_envelope_grows_exponentially_until_the_cap() -> None:
    policy = Backoff(base=1.0, factor=2.0, cap=60.0)
    assert [policy.envelope(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_full_jitter_spans_zero_to_the_envelope() -> None:
    policy = Backoff(base=1.0, factor=2.0, cap=60.0)
    assert policy.delay(3, 0.0) == 0.0
    assert policy.delay(3, 0.5) == pytest.approx(2.0)
    assert policy.delay(3, 0.999999) == pytest.approx(4.0, rel=1e-5)
    assert policy.delay(100, 0.5) == pytest.approx(30.0)


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    policy = Backoff(base=1.0, factor=10.0, cap=60.0)
    assert policy.envelope(10_000) == 60.0


def test_should_retry_until_max_attempts() -> None:
    policy = Backoff(max_attempts=3)
    assert [policy.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_one_attempt_means_no_retry() -> None:
    assert not Backoff(max_attempts=1).should_retry(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1.0},
        {"factor": 0.5},
        {"cap": float("nan")},
        {"max_attempts": 0},
        {"base": float("inf")},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be"):
        Backoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "rand"), [(0, 0.5), (1, -0.1), (1, 1.5), (1, float("nan"))])
def test_nonsense_arguments_are_refused(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError, match=r"attempts|rand"):
        Backoff().delay(attempt, rand)


def test_throttle_pause_takes_the_apis_figure() -> None:
    assert throttle_pause(120.0, 1) == 120.0
    assert throttle_pause(5000.0, 7) == 5000.0  # never cut short: calls while blocked extend it


def test_throttle_pause_without_a_figure_doubles_to_the_cap() -> None:
    pauses = [throttle_pause(None, n) for n in range(1, 8)]
    assert pauses == [30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0]
    assert throttle_pause(None, 10**6) == 900.0
    assert throttle_pause(None, 2, base=5.0, cap=8.0) == 8.0


@pytest.mark.parametrize("retry_after", [0.0, -3.0, float("nan"), float("inf")])
def test_throttle_pause_ignores_unusable_figures(retry_after: float) -> None:
    assert throttle_pause(retry_after, 1) == 30.0


def test_throttle_pause_treats_zero_consecutive_as_the_first() -> None:
    assert throttle_pause(None, 0) == 30.0


@given(
    base=st.floats(min_value=0.0, max_value=1e6),
    factor=st.floats(min_value=1.0, max_value=1e3),
    cap=st.floats(min_value=0.0, max_value=1e6),
    attempt=st.integers(min_value=1, max_value=10_000),
    rand=unit_interval,
)
def test_delay_is_always_within_zero_and_cap(
    base: float, factor: float, cap: float, attempt: int, rand: float
) -> None:
    policy = Backoff(base=base, factor=factor, cap=cap)
    assert 0.0 <= policy.delay(attempt, rand) <= cap


@given(attempt=st.integers(min_value=1, max_value=500), rand=unit_interval)
def test_envelope_never_shrinks(attempt: int, rand: float) -> None:
    policy = Backoff()
    assert policy.envelope(attempt) <= policy.envelope(attempt + 1)
    assert policy.delay(attempt, rand) <= policy.envelope(attempt)


@given(
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    consecutive=st.integers(min_value=-5, max_value=10**9),
)
def test_throttle_pause_is_positive_and_finite(retry_after: float | None, consecutive: int) -> None:
    pause = throttle_pause(retry_after, consecutive)
    assert 0.0 < pause < float("inf")
