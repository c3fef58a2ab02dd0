"""Settling, by moving time by hand."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncd.settle import SettleTracker


def test_unchanged_file_settles_after_the_period() -> None:
    t = SettleTracker(2.0)
    t.touch("a.jpg", 0.0)
    assert t.due(1.0) == []
    assert t.due(2.0) == ["a.jpg"]
    assert t.confirm("a.jpg", (10, 1), 2.0) is False  # first look: clock starts from here
    assert t.next_deadline() == 4.0
    assert t.confirm("a.jpg", (10, 1), 4.0) is True
    assert len(t) == 0


def test_growing_file_keeps_moving_the_deadline() -> None:
    t = SettleTracker(2.0)
    t.touch("slow.jpg", 0.0, (10, 1))
    for second, size in ((2.0, 20), (4.0, 30), (6.0, 40)):
        assert t.confirm("slow.jpg", (size, int(second)), second) is False
    assert t.confirm("slow.jpg", (40, 6), 7.0) is False  # unchanged, but not for 2 s yet
    assert t.confirm("slow.jpg", (40, 6), 8.0) is True


def test_events_with_the_same_stat_do_not_restart_the_clock() -> None:
    t = SettleTracker(2.0)
    t.touch("a.jpg", 0.0, (5, 5))
    t.touch("a.jpg", 1.5, (5, 5))
    assert t.due(2.0) == ["a.jpg"]
    t.touch("a.jpg", 1.9, (6, 6))
    assert t.due(2.0) == []


def test_vanished_file_is_forgotten() -> None:
    t = SettleTracker(1.0)
    t.touch("tmp.jpg", 0.0, (1, 1))
    assert t.confirm("tmp.jpg", None, 1.0) is False
    assert "tmp.jpg" not in t
    assert t.next_deadline() is None


def test_oldest_age() -> None:
    t = SettleTracker(1.0)
    assert t.oldest_age(5.0) == 0.0
    t.touch("a", 1.0)
    t.touch("b", 3.0)
    t.touch("a", 4.0, (1, 1))
    assert t.oldest_age(5.0) == 4.0


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 3)), min_size=1, max_size=30))
def test_never_settles_before_the_period_since_the_last_change(
    looks: list[tuple[float, int]],
) -> None:
    t = SettleTracker(2.0)
    t.touch("f", 0.0)
    last_change = 0.0
    last_stat: tuple[int, int] | None = None
    now = 0.0
    for step, size in looks:
        now += step
        stat = (size, 0)
        if stat != last_stat:
            last_change = now
        settled = t.confirm("f", stat, now)
        if settled:
            assert now - last_change >= 2.0
            break
        last_stat = stat
