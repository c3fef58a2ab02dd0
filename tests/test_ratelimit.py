"""The per-account token bucket, driven by a virtual clock: no test sleeps for real."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from fakeclock import BusyLoop, Deadlock, FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.ratelimit import READ_COST, WRITE_COST, TokenBucket


def make(
    rate: float, burst: float, clock: FakeClock | None = None
) -> tuple[FakeClock, TokenBucket]:
    clock = clock or FakeClock()
    return clock, TokenBucket(rate, burst, clock=clock.now, sleep=clock.sleep)


async def granted_at(clock: FakeClock, bucket: TokenBucket, cost: float) -> float:
    """Acquire, and say at what virtual time the tokens came."""
    await bucket.acquire(cost)
    return clock.now()


def start(clock: FakeClock, bucket: TokenBucket, cost: float) -> asyncio.Task[float]:
    return asyncio.create_task(granted_at(clock, bucket, cost))


# -- rate and burst -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_burst_then_steady_rate() -> None:
    clock, bucket = make(rate=2, burst=5)

    async def ten_reads() -> list[float]:
        return [await granted_at(clock, bucket, READ_COST) for _ in range(10)]

    times = await clock.run(ten_reads())
    assert times == pytest.approx([0, 0, 0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.5])


@pytest.mark.asyncio
async def test_300_writes_take_the_time_the_rate_says() -> None:
    clock, bucket = make(rate=5, burst=5)
    await clock.run(asyncio.gather(*(bucket.acquire(WRITE_COST) for _ in range(300))))
    # 900 tokens, 5 of them in the initial burst, the rest at 5 per second: 180 s less a burst.
    assert clock.now() == pytest.approx((900 - 5) / 5)
    assert 179.0 <= clock.now() <= 180.0
    assert bucket.waiting == 0
    assert clock.sleepers == 0  # the timer is gone with the last waiter


@pytest.mark.asyncio
async def test_only_one_timer_sleeps_however_many_wait() -> None:
    clock, bucket = make(rate=1, burst=3)
    await bucket.acquire(3)
    tasks = [start(clock, bucket, 1) for _ in range(10)]
    await clock.run_until_idle()
    assert (bucket.waiting, clock.sleepers) == (10, 1)
    await clock.advance(10)
    assert [t.result() for t in tasks] == pytest.approx([float(n) for n in range(1, 11)])


@pytest.mark.asyncio
async def test_tokens_refill_up_to_burst_only() -> None:
    clock, bucket = make(rate=2, burst=5)
    await bucket.acquire(4)
    assert bucket.tokens == pytest.approx(1)
    await clock.advance(1)
    assert bucket.tokens == pytest.approx(3)
    await clock.advance(100)
    assert bucket.tokens == 5


@pytest.mark.parametrize("cost", [5.5, 0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.asyncio
async def test_impossible_costs_are_refused(cost: float) -> None:
    _, bucket = make(rate=1, burst=5)
    with pytest.raises(ValueError, match="cost"):
        await bucket.acquire(cost)


@pytest.mark.parametrize(
    ("rate", "burst", "fraction"), [(0, 5, 0.05), (1, 0, 0.05), (1, 5, 0), (1, 5, 1.5)]
)
def test_nonsense_buckets_are_refused(rate: float, burst: float, fraction: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst, min_rate_fraction=fraction)


# -- fairness and cancellation --------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_small_request_never_overtakes_a_big_one() -> None:
    clock, bucket = make(rate=1, burst=5)
    await bucket.acquire(5)
    big = start(clock, bucket, 5)
    small = [start(clock, bucket, 1) for _ in range(3)]
    await clock.advance(1)  # one token: enough for a small one, but the big one is first
    assert not any(t.done() for t in (big, *small))
    await clock.advance(9)
    assert big.result() == pytest.approx(5)
    assert [t.result() for t in small] == pytest.approx([6, 7, 8])


@pytest.mark.asyncio
async def test_a_new_caller_queues_behind_waiters_even_when_tokens_suffice() -> None:
    clock, bucket = make(rate=1, burst=5)
    await bucket.acquire(5)
    first = start(clock, bucket, 3)
    await clock.advance(2)  # 2 tokens
    late = start(clock, bucket, 1)
    await clock.run_until_idle()
    assert not late.done()
    await clock.advance(2)
    assert (first.result(), late.result()) == pytest.approx((3, 4))


@pytest.mark.asyncio
async def test_cancelling_the_head_lets_the_next_proceed() -> None:
    clock, bucket = make(rate=1, burst=5)
    await bucket.acquire(5)
    head = start(clock, bucket, 3)
    second, third = start(clock, bucket, 1), start(clock, bucket, 1)
    await clock.advance(1)
    head.cancel()
    await clock.run_until_idle()
    assert head.cancelled()
    assert second.result() == pytest.approx(1)  # the token the head never took
    await clock.advance(1)
    assert third.result() == pytest.approx(2)


@pytest.mark.asyncio
async def test_cancelling_a_middle_waiter_loses_nothing() -> None:
    clock, bucket = make(rate=1, burst=5)
    await bucket.acquire(5)
    first, middle, last = start(clock, bucket, 3), start(clock, bucket, 3), start(clock, bucket, 1)
    await clock.advance(1)
    middle.cancel()
    await clock.advance(4)
    assert middle.cancelled()
    assert (first.result(), last.result()) == pytest.approx((3, 4))
    assert bucket.tokens == pytest.approx(1)


@pytest.mark.asyncio
async def test_tokens_granted_to_a_caller_cancelled_before_it_resumed_go_back() -> None:
    clock, bucket = make(rate=1, burst=5)
    await bucket.acquire(5)
    victim: asyncio.Task[float] | None = None

    async def head_that_cancels_the_next() -> None:
        try:
            await bucket.acquire(3)
        except asyncio.CancelledError:
            # Withdrawing the head has just granted the victim; cancel it before it runs.
            assert victim is not None
            victim.cancel()
            raise

    head = asyncio.create_task(head_that_cancels_the_next())
    victim = start(clock, bucket, 1)
    after = start(clock, bucket, 1)
    await clock.advance(1)
    head.cancel()
    await clock.run_until_idle()
    assert head.cancelled()
    assert victim.cancelled()
    assert after.result() == pytest.approx(1)  # got the victim's token back, at once
    assert bucket.tokens == 0


@pytest.mark.asyncio
async def test_cancelling_every_waiter_stops_the_timer() -> None:
    clock, bucket = make(rate=1, burst=3)
    await bucket.acquire(3)
    tasks = [start(clock, bucket, 1) for _ in range(3)]
    await clock.run_until_idle()
    for task in tasks:
        task.cancel()
    await clock.run_until_idle()
    assert (bucket.waiting, clock.sleepers) == (0, 0)
    await clock.advance(3)
    assert bucket.tokens == 3


@pytest.mark.asyncio
async def test_closing_fails_every_waiter_now_and_every_later_caller() -> None:
    clock, bucket = make(rate=1, burst=3)
    await bucket.acquire(3)
    tasks = [start(clock, bucket, 1) for _ in range(3)]
    await clock.run_until_idle()
    assert bucket.waiting == 3
    refused = RuntimeError("token refused")
    bucket.close(refused)
    await clock.run_until_idle()
    assert [t.exception() for t in tasks] == [refused] * 3
    assert clock.now() == 0  # nobody waited for tokens to fail
    assert (bucket.waiting, clock.sleepers) == (0, 0)
    with pytest.raises(RuntimeError, match="token refused"):
        await bucket.acquire(1)


@pytest.mark.asyncio
async def test_a_waiter_cancelled_as_the_bucket_closes_leaves_nothing_behind() -> None:
    clock, bucket = make(rate=1, burst=3)
    await bucket.acquire(3)
    task = start(clock, bucket, 1)
    await clock.run_until_idle()
    bucket.close(RuntimeError("token refused"))
    task.cancel()  # before it resumed: it sees the cancellation, not the refusal
    await clock.run_until_idle()
    assert task.cancelled()
    assert (bucket.waiting, clock.sleepers) == (0, 0)


# -- pauses ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pause_grants_nothing_before_its_end_and_empties_the_bucket() -> None:
    clock, bucket = make(rate=2, burst=5)
    bucket.pause_for(10)
    assert bucket.tokens == 0
    task = start(clock, bucket, 1)
    await clock.advance_to(10)
    assert not task.done()
    assert bucket.tokens == 0  # nothing earned during the pause: no burst afterwards
    await clock.advance(0.5)
    assert task.result() == pytest.approx(10.5)


@pytest.mark.asyncio
async def test_a_pause_delays_a_waiter_already_queued() -> None:
    clock, bucket = make(rate=2, burst=5)
    await bucket.acquire(5)
    task = start(clock, bucket, 1)  # would be served at 0.5
    await clock.advance(0.2)
    bucket.pause_for(10)  # until 10.2; the 0.4 tokens earned so far are gone
    await clock.advance_to(10.6)
    assert not task.done()
    await clock.advance_to(10.7)
    assert task.result() == pytest.approx(10.7)


@pytest.mark.asyncio
async def test_the_longest_pause_wins_and_is_counted_once() -> None:
    clock, bucket = make(rate=2, burst=5)
    bucket.pause_for(10)
    await clock.advance(1)
    bucket.pause_for(3)  # shorter than what is left: changes nothing
    assert bucket.paused_until == 10
    bucket.pause_for(20)
    assert bucket.paused_until == 21
    await clock.advance(5)
    assert bucket.throttled_seconds == pytest.approx(6)
    await clock.advance_to(30)
    assert bucket.throttled_seconds == pytest.approx(21)
    bucket.pause_for(5)
    await clock.advance(10)
    assert bucket.throttled_seconds == pytest.approx(26)


@pytest.mark.asyncio
async def test_pausing_one_account_does_not_delay_another() -> None:
    clock, paused = make(rate=2, burst=5)
    _, other = make(rate=2, burst=5, clock=clock)
    paused.pause_for(100)
    blocked = start(clock, paused, 1)

    async def six_reads() -> list[float]:
        return [await granted_at(clock, other, 1) for _ in range(6)]

    assert await clock.run(six_reads()) == pytest.approx([0, 0, 0, 0, 0, 0.5])
    assert not blocked.done()
    await clock.advance_to(100.5)
    assert blocked.result() == pytest.approx(100.5)


def test_nonsense_pauses() -> None:
    _, bucket = make(rate=2, burst=5)
    bucket.pause_for(0)
    bucket.pause_for(-3)
    assert (bucket.paused_until, bucket.tokens) == (0, 5)
    with pytest.raises(ValueError, match="finite"):
        bucket.pause_for(float("inf"))


# -- adaptation -----------------------------------------------------------------------------


def test_high_utilisation_slows_low_recovers_never_above_configured() -> None:
    _, bucket = make(rate=10, burst=5)
    bucket.observe_utilisation(90)
    assert bucket.effective_rate == pytest.approx(4)  # 10 % headroom of 25: 0.4 of the rate
    bucket.observe_utilisation(90)
    assert bucket.effective_rate == pytest.approx(4)  # a level, not an event: no compounding
    bucket.observe_utilisation(60)
    assert bucket.effective_rate == pytest.approx(4)  # in between: hold
    bucket.observe_utilisation(30)
    assert bucket.effective_rate == pytest.approx(5)  # additive: +10 % of the rate
    for _ in range(20):
        bucket.observe_utilisation(30)
    assert bucket.effective_rate == 10


def test_utilisation_at_or_over_100_hits_the_floor() -> None:
    _, bucket = make(rate=10, burst=5)
    bucket.observe_utilisation(100)
    assert bucket.effective_rate == pytest.approx(0.5)
    bucket.observe_utilisation(400)
    assert bucket.effective_rate == pytest.approx(0.5)
    bucket.observe_utilisation(float("nan"))
    assert bucket.effective_rate == pytest.approx(0.5)


def test_a_throttle_halves_the_rate_down_to_the_floor() -> None:
    _, bucket = make(rate=10, burst=5)
    rates = []
    for _ in range(6):
        bucket.note_throttled()
        rates.append(bucket.effective_rate)
    assert rates == pytest.approx([5, 2.5, 1.25, 0.625, 0.5, 0.5])


@pytest.mark.asyncio
async def test_a_slower_rate_spaces_calls_out() -> None:
    clock, bucket = make(rate=2, burst=3)
    await bucket.acquire(3)
    bucket.observe_utilisation(90)  # 0.8 tokens per second
    assert await clock.run(granted_at(clock, bucket, 1)) == pytest.approx(1.25)


@pytest.mark.asyncio
async def test_a_recovering_rate_wakes_a_waiter_sooner() -> None:
    clock, bucket = make(rate=1, burst=3)
    bucket.note_throttled()  # 0.5 per second
    await bucket.acquire(3)
    task = start(clock, bucket, 1)  # due at 2.0 at this rate
    await clock.advance(0.5)  # 0.25 earned
    bucket.observe_utilisation(10)  # 0.6 per second: the remaining 0.75 take 1.25 s
    await clock.advance(1.25)
    assert task.result() == pytest.approx(1.75)


@pytest.mark.asyncio
async def test_a_falling_rate_delays_a_waiter() -> None:
    clock, bucket = make(rate=1, burst=3)
    await bucket.acquire(3)
    task = start(clock, bucket, 1)  # due at 1.0
    await clock.advance(0.5)  # 0.5 earned
    bucket.note_throttled()  # 0.5 per second: the remaining 0.5 take 1 s
    await clock.advance(0.9)
    assert not task.done()
    assert await clock.run(task) == pytest.approx(1.5)


# -- the invariant, under random load -------------------------------------------------------


@dataclass(frozen=True)
class Call:
    arrives: float
    cost_fraction: float
    cancel_after: float | None


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    value: float


calls = st.builds(
    Call,
    arrives=st.floats(0, 20),
    cost_fraction=st.floats(0.01, 1),
    cancel_after=st.none() | st.floats(0, 5),
)
events = st.builds(
    Event,
    at=st.floats(0, 20),
    kind=st.sampled_from(["pause", "util", "throttled"]),
    value=st.floats(0, 120),
)


@settings(deadline=None, max_examples=150)
@given(
    rate=st.floats(0.5, 20),
    burst=st.floats(3, 20),
    load=st.lists(calls, min_size=1, max_size=30),
    disturbances=st.lists(events, max_size=6),
)
def test_grants_never_exceed_burst_plus_rate_times_window(
    rate: float, burst: float, load: list[Call], disturbances: list[Event]
) -> None:
    grants = asyncio.run(simulate(rate, burst, load, disturbances))
    for i, (t_i, _, _) in enumerate(grants):
        window_tokens = 0.0
        for t_j, cost, _ in grants[i:]:
            window_tokens += cost
            assert window_tokens <= burst + rate * (t_j - t_i) + 1e-6 * len(grants)
    # FIFO: whoever asked first is never served later.
    by_request = sorted(grants, key=lambda g: g[2])
    assert [g[0] for g in by_request] == sorted(g[0] for g in by_request)


async def simulate(
    rate: float, burst: float, load: list[Call], disturbances: list[Event]
) -> list[tuple[float, float, int]]:
    """Run the load; return (granted at, cost, request order) for each call that got tokens."""
    clock, bucket = make(rate, burst)
    grants: list[tuple[float, float, int]] = []
    requests = 0

    async def call(c: Call) -> None:
        nonlocal requests
        await clock.sleep(c.arrives)
        order, requests = requests, requests + 1
        cost = c.cost_fraction * burst
        await bucket.acquire(cost)
        grants.append((clock.now(), cost, order))

    async def cancel_later(task: asyncio.Task[None], after: float) -> None:
        await clock.sleep(after)
        task.cancel()

    async def disturb(e: Event) -> None:
        await clock.sleep(e.at)
        if e.kind == "pause":
            bucket.pause_for(e.value)
        elif e.kind == "util":
            bucket.observe_utilisation(e.value)
        else:
            bucket.note_throttled()

    async def scenario() -> None:
        tasks = [asyncio.create_task(call(c)) for c in load]
        helpers = [
            cancel_later(t, c.arrives + c.cancel_after)
            for t, c in zip(tasks, load, strict=True)
            if c.cancel_after is not None
        ]
        helpers += [disturb(e) for e in disturbances]
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)

    await clock.run(scenario())
    assert (bucket.waiting, clock.sleepers) == (0, 0)
    return grants


# -- the production wiring and the fake clock itself ----------------------------------------


@pytest.mark.asyncio
async def test_defaults_use_the_real_monotonic_clock() -> None:
    bucket = TokenBucket(1000, 3)  # a fast rate: the one wait below is about a millisecond
    began = time.monotonic()
    for _ in range(4):
        await bucket.acquire(1)
    assert time.monotonic() - began < 5  # finished; the timing itself is not under test


@pytest.mark.asyncio
async def test_fake_clock_wakes_sleepers_in_order_at_their_deadlines() -> None:
    clock = FakeClock(start=100)
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(nap(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2), ("z", 9)]]
    await clock.advance(5)
    assert woke == [("a", 101), ("b", 102), ("c", 103)]
    assert (clock.now(), clock.sleepers, clock.next_deadline) == (105, 1, 109)
    tasks[-1].cancel()
    await clock.run_until_idle()
    assert (clock.sleepers, clock.next_deadline) == (0, None)


@pytest.mark.asyncio
async def test_fake_clock_auto_advance_jumps_to_each_deadline() -> None:
    clock, bucket = make(rate=1, burst=3)
    async with clock.auto_advance():
        await clock.sleep(7)
        assert clock.now() == 7
        await bucket.acquire(3)
        await bucket.acquire(2)
    assert clock.now() == pytest.approx(9)


@pytest.mark.asyncio
async def test_fake_clock_reports_a_deadlock_instead_of_hanging() -> None:
    clock = FakeClock()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(Deadlock):
        await clock.run(never)


@pytest.mark.asyncio
async def test_fake_clock_reports_a_busy_loop_instead_of_hanging() -> None:
    clock = FakeClock()

    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    with pytest.raises(BusyLoop):
        await clock.run_until_idle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_fake_clock_advance_works_inside_auto_advance() -> None:
    clock = FakeClock()
    async with clock.auto_advance():
        sleeper = asyncio.create_task(clock.sleep(3))
        await clock.advance(1)
        await sleeper
    assert clock.now() == 3
