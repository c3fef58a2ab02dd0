"""One account's channel: bucket, retries, throttling and auth, on a virtual clock.

Most tests drive a small scripted client; a few run the real GraphClient against the
emulator, whose clock then follows the same virtual clock, so throttling storms end when
virtual time says so and nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import cast

import aiohttp
import pytest
import pytest_asyncio
from conftest import throttle
from fakeclock import FakeClock
from images import png_bytes
from structlog.testing import capture_logs

from syncd.backoff import Backoff
from syncd.channel import MAX_CONSECUTIVE_THROTTLES, AccountChannel
from syncd.emulator import AccountLimits, EmulatorThread
from syncd.errors import AuthError, GraphError, PermanentError, ThrottledError, TransientError
from syncd.graph import HASHES_PER_READ, GraphClient, Uploaded
from syncd.models import RemoteImage
from syncd.ratelimit import READ_COST, WRITE_COST, TokenBucket
from syncd.secrets import Token

ACCOUNT = "1234567890"
OTHER = "2222222222"

Page = tuple[list[RemoteImage], str | None]


class FakeClient:
    """Stands in for GraphClient: answers from a script, remembering when each call came.

    Each scripted item is the answer to one call, in order: an exception is raised, anything
    else returned; once the script is empty every call succeeds with a plain answer.
    """

    def __init__(self, clock: FakeClock, script: Sequence[object] = ()) -> None:
        self.clock = clock
        self.script: deque[object] = deque(script)
        self.calls: list[tuple[str, float]] = []
        self.afters: list[str | None] = []
        self.pages: dict[str | None, Page] = {}
        self.hold: asyncio.Event | None = None
        self.latency = 0.0  # virtual seconds each call spends on the network
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def times(self) -> list[float]:
        return [at for _, at in self.calls]

    async def _answer(self, what: str, default: object) -> object:
        self.calls.append((what, self.clock.now()))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.latency:
                await self.clock.sleep(self.latency)
            if self.script:
                item = self.script.popleft()
                if isinstance(item, BaseException):
                    raise item
                return item
            return default
        finally:
            self.in_flight -= 1

    async def check_account(self, account: str) -> dict[str, object]:
        return cast(dict[str, object], await self._answer("check", {"account_id": account}))

    async def upload(self, account: str, name: str, data: bytes) -> Uploaded:
        return cast(Uploaded, await self._answer("upload", Uploaded("h-" + name, name)))

    async def list_page(
        self, account: str, after: str | None = None, fields: str = ""
    ) -> tuple[list[RemoteImage], str | None]:
        self.afters.append(after)
        return cast(Page, await self._answer("list", self.pages.get(after, ([], None))))

    async def read_hashes(
        self, account: str, hashes: Sequence[str], fields: str = ""
    ) -> list[RemoteImage]:
        found = [RemoteImage(h) for h in hashes]
        return cast(list[RemoteImage], await self._answer(f"read:{len(hashes)}", found))

    async def delete_image(self, account: str, image_hash: str) -> None:
        await self._answer("delete", None)


def make_channel(
    client: FakeClient | GraphClient,
    clock: FakeClock,
    *,
    account: str = ACCOUNT,
    rate: float = 10.0,
    burst: float = 10.0,
    backoff: Backoff | None = None,
    gate: asyncio.Semaphore | None = None,
    sleeps: list[float] | None = None,
) -> AccountChannel:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)
        await clock.sleep(seconds)

    bucket = TokenBucket(rate, burst, clock=clock.now, sleep=clock.sleep)
    return AccountChannel(
        account,
        cast(GraphClient, client),
        bucket,
        backoff or Backoff(base=1.0, factor=2.0, cap=60.0, max_attempts=4),
        gate=gate,
        rand=lambda: 0.5,
        sleep=sleep,
    )


def transient() -> TransientError:
    return TransientError("(#2) Service temporarily unavailable", code=2, status=503)


def throttled(retry_after: float | None = None) -> ThrottledError:
    return ThrottledError("(#80004) too many calls", code=80004, retry_after=retry_after)


def auth_error() -> AuthError:
    return AuthError("(#190) Error validating access token", code=190, subcode=463)


def images(*hashes: str) -> list[RemoteImage]:
    return [RemoteImage(h, name=f"{h}.png") for h in hashes]


# -- transient errors --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_transient_errors_back_off_then_give_up() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [transient() for _ in range(10)])
    sleeps: list[float] = []
    channel = make_channel(fake, clock, sleeps=sleeps)
    with pytest.raises(TransientError):
        await clock.run(channel.upload("a.png", b"x"))
    # max_attempts = 4: four requests, three backoff sleeps of rand * base * 2**(n-1).
    assert len(fake.calls) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert fake.times == pytest.approx([0.0, 0.5, 1.5, 3.5])
    assert (channel.stats.requests, channel.stats.retries) == (4, 3)
    assert channel.auth_error is None


@pytest.mark.asyncio
async def test_transient_error_then_success() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [transient(), transient()])
    channel = make_channel(fake, clock)
    uploaded = await clock.run(channel.upload("a.png", b"x"))
    assert uploaded == Uploaded("h-a.png", "a.png")
    assert len(fake.calls) == 3
    assert channel.stats.retries == 2


@pytest.mark.asyncio
async def test_backoff_is_capped() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [transient() for _ in range(6)])
    sleeps: list[float] = []
    backoff = Backoff(base=10.0, factor=10.0, cap=50.0, max_attempts=10)
    channel = make_channel(fake, clock, backoff=backoff, sleeps=sleeps)
    await clock.run(channel.check())
    assert sleeps == [5.0, 25.0, 25.0, 25.0, 25.0, 25.0]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "error", [PermanentError("(#100) Invalid parameter", code=100), ValueError("bug")]
)
async def test_other_errors_are_not_retried(error: Exception) -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [error])
    channel = make_channel(fake, clock)
    with pytest.raises(type(error)):
        await clock.run(channel.delete("h"))
    assert len(fake.calls) == 1
    assert clock.now() == 0


# -- throttling --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_throttle_pauses_for_the_api_figure_then_retries() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [throttled(retry_after=120.0)])
    sleeps: list[float] = []
    channel = make_channel(fake, clock, sleeps=sleeps)
    uploaded = await clock.run(channel.upload("a.png", b"x"))
    assert uploaded.hash == "h-a.png"
    # Paused 120 s; the bucket comes back empty at half the rate: 3 tokens take 0.6 s more.
    assert fake.times == pytest.approx([0.0, 120.6])
    assert sleeps == []  # the pause is the bucket's, not a backoff sleep
    assert channel.stats.throttles == 1
    assert channel.bucket.effective_rate == pytest.approx(5.0)
    assert channel.bucket.throttled_seconds == pytest.approx(120.0)


@pytest.mark.asyncio
async def test_throttle_without_a_figure_pauses_exponentially() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [throttled(), throttled(), throttled()])
    channel = make_channel(fake, clock)
    await clock.run(channel.check())
    # Pauses of 30, 60, 120 s; after each the bucket earns one token at the halved rate.
    assert fake.times == pytest.approx([0.0, 30.2, 90.6, 211.4])
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:], strict=False)]
    assert [round(g) for g in gaps] == [30, 60, 121]
    assert channel.stats.throttles == 3


@pytest.mark.asyncio
async def test_other_calls_of_a_throttled_account_wait_for_the_pause() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [throttled(retry_after=60.0)])
    channel = make_channel(fake, clock)
    first = asyncio.ensure_future(channel.upload("a.png", b"x"))
    await clock.run_until_idle()
    assert channel.bucket.paused_until == 60
    second = asyncio.ensure_future(channel.check())
    await clock.run(asyncio.gather(first, second))
    assert min(fake.times[1:]) >= 60


@pytest.mark.asyncio
async def test_consecutive_throttles_are_bounded() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [throttled(retry_after=5.0) for _ in range(50)])
    channel = make_channel(fake, clock)
    with pytest.raises(ThrottledError):
        await clock.run(channel.check())
    assert len(fake.calls) == MAX_CONSECUTIVE_THROTTLES
    assert channel.stats.throttles == MAX_CONSECUTIVE_THROTTLES
    assert channel.auth_error is None


@pytest.mark.asyncio
async def test_one_accounts_throttling_does_not_delay_another() -> None:
    clock = FakeClock()
    gate = asyncio.Semaphore(1)  # even with one slot for everybody
    slow = FakeClient(clock, [throttled(retry_after=300.0)])
    fast = FakeClient(clock)
    fast.pages = {None: (images("h1"), None)}
    a = make_channel(slow, clock, gate=gate)
    b = make_channel(fast, clock, account=OTHER, gate=gate)

    waiting = asyncio.ensure_future(a.upload("a.png", b"x"))
    await clock.run_until_idle()
    assert a.bucket.paused_until == 300
    results = await clock.run(asyncio.gather(b.upload("b.png", b"y"), b.check(), b.list_all()))
    assert clock.now() == 0  # nothing of B waited for A's pause
    assert fast.times == [0.0, 0.0, 0.0]
    assert set(results[2]) == {"h1"}
    assert b.bucket.paused_until <= 0
    assert b.bucket.effective_rate == 10.0

    await clock.run(waiting)
    assert slow.times[1] >= 300


# -- auth --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_auth_error_stops_the_account_without_further_requests() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [auth_error()])
    channel = make_channel(fake, clock)
    with pytest.raises(AuthError) as first:
        await clock.run(channel.check())
    assert channel.auth_error is first.value
    assert len(fake.calls) == 1  # never retried
    tokens = channel.bucket.tokens

    for call in (
        channel.check(),
        channel.upload("a.png", b"x"),
        channel.list_all(),
        channel.read(["h"]),
        channel.delete("h"),
    ):
        with pytest.raises(AuthError) as later:
            await call  # at once: no clock is driven, nothing may wait
        assert later.value.code == 190
    assert len(fake.calls) == 1
    assert channel.bucket.tokens == tokens
    assert channel.stats.requests == 1


@pytest.mark.asyncio
async def test_calls_waiting_in_the_bucket_send_nothing_after_an_auth_error() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [auth_error()])
    fake.latency = 1.0  # the refusal arrives at t=1
    channel = make_channel(fake, clock, rate=1.0, burst=3.0)  # one write per 3 s
    failed_at: list[float] = []

    async def upload(n: int) -> None:
        try:
            await channel.upload(f"{n}.png", b"x")
        finally:
            failed_at.append(clock.now())

    calls = [asyncio.ensure_future(upload(n)) for n in range(4)]
    with capture_logs() as logs:
        outcomes = await clock.run(asyncio.gather(*calls, return_exceptions=True))
    assert all(isinstance(o, AuthError) for o in outcomes)
    assert failed_at == [1.0] * 4  # at the refusal, not after waiting 3, 6, 9 s for tokens
    assert len(fake.calls) == 1  # only the first ever reached the network
    assert [e["event"] for e in logs] == ["account_auth_failed"]  # said once


@pytest.mark.asyncio
async def test_calls_waiting_for_the_gate_send_nothing_after_an_auth_error() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [auth_error()])
    fake.hold = asyncio.Event()
    channel = make_channel(fake, clock, gate=asyncio.Semaphore(1))
    calls = [asyncio.ensure_future(channel.check()) for _ in range(3)]
    await clock.run_until_idle()
    assert len(fake.calls) == 1  # the others hold tokens and wait for the gate
    fake.hold.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, AuthError) for o in outcomes)
    assert len(fake.calls) == 1


# -- usage headers -----------------------------------------------------------------------


def account_usage(pct: float, reset: float = 0) -> dict[str, str]:
    return {
        "X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": pct, "reset_time_duration": reset})
    }


def business_usage(account: str, pct: float, minutes: int = 0) -> dict[str, str]:
    entry = {
        "type": "ads_management",
        "call_count": pct,
        "total_time": 1,
        "total_cputime": 1,
        "estimated_time_to_regain_access": minutes,
    }
    return {"X-Business-Use-Case-Usage": json.dumps({account: [entry]})}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "headers", [account_usage(90), business_usage(ACCOUNT, 90)], ids=["account", "business"]
)
async def test_usage_at_90_percent_slows_the_bucket(headers: Mapping[str, str]) -> None:
    clock = FakeClock()
    fake = FakeClient(clock)
    channel = make_channel(fake, clock, rate=10.0, burst=2.0)
    channel.observe_headers(headers)
    # 90 % leaves 10 of the 25 points of headroom above 75 %: 40 % of the configured rate.
    assert channel.bucket.effective_rate == pytest.approx(4.0)

    async def reads() -> None:
        for _ in range(6):
            await channel.check()

    await clock.run(reads())
    assert fake.times == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.asyncio
async def test_usage_of_another_account_does_not_slow_this_one() -> None:
    clock = FakeClock()
    channel = make_channel(FakeClient(clock), clock)
    channel.observe_headers(business_usage(OTHER, 90) | business_usage(ACCOUNT, 10))
    assert channel.bucket.effective_rate == 10.0


@pytest.mark.asyncio
async def test_usage_at_100_percent_pauses_for_the_reset() -> None:
    clock = FakeClock()
    fake = FakeClient(clock)
    channel = make_channel(fake, clock)
    channel.observe_headers(account_usage(100, reset=45))
    assert channel.bucket.paused_until == 45
    await clock.run(channel.check())
    assert fake.times[0] >= 45


@pytest.mark.asyncio
async def test_low_usage_lets_the_rate_recover_step_by_step() -> None:
    clock = FakeClock()
    channel = make_channel(FakeClient(clock), clock)
    channel.observe_headers(account_usage(95))
    low = channel.bucket.effective_rate
    assert low == pytest.approx(2.0)
    channel.observe_headers(account_usage(20))
    assert channel.bucket.effective_rate == pytest.approx(3.0)
    for _ in range(20):
        channel.observe_headers(account_usage(20))
    assert channel.bucket.effective_rate == 10.0


# -- the gate ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gate_limits_calls_in_flight_across_channels() -> None:
    clock = FakeClock()
    gate = asyncio.Semaphore(2)
    one, two = FakeClient(clock), FakeClient(clock)
    hold = asyncio.Event()
    one.hold = two.hold = hold
    a = make_channel(one, clock, gate=gate)
    b = make_channel(two, clock, account=OTHER, gate=gate)
    calls = [asyncio.ensure_future(ch.check()) for ch in (a, b, a, b, a)]
    await clock.run_until_idle()
    assert one.in_flight + two.in_flight == 2
    hold.set()
    await asyncio.gather(*calls)
    assert len(one.calls) + len(two.calls) == 5
    assert one.in_flight + two.in_flight == 0


@pytest.mark.asyncio
async def test_gate_slot_is_released_on_errors() -> None:
    clock = FakeClock()
    gate = asyncio.Semaphore(1)
    fake = FakeClient(clock, [transient(), PermanentError("no", code=100)])
    channel = make_channel(fake, clock, gate=gate)
    with pytest.raises(PermanentError):
        await clock.run(channel.check())
    assert not gate.locked()
    await clock.run(channel.check())


# -- costs, reads, listing ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_reads_cost_one_token_and_writes_three() -> None:
    clock = FakeClock()
    channel = make_channel(FakeClient(clock), clock, rate=1.0, burst=10.0)
    await channel.check()
    assert channel.bucket.tokens == pytest.approx(10 - READ_COST)
    await channel.upload("a.png", b"x")
    await channel.delete("h")
    assert channel.bucket.tokens == pytest.approx(10 - READ_COST - 2 * WRITE_COST)


@pytest.mark.asyncio
async def test_read_splits_hashes_into_chunks() -> None:
    clock = FakeClock()
    fake = FakeClient(clock)
    channel = make_channel(fake, clock)
    hashes = [f"{n:032x}" for n in range(2 * HASHES_PER_READ + 20)]
    found = await clock.run(channel.read(hashes))
    assert set(found) == set(hashes)
    assert [what for what, _ in fake.calls] == ["read:50", "read:50", "read:20"]
    assert await channel.read([]) == {}
    assert len(fake.calls) == 3


@pytest.mark.asyncio
async def test_list_all_follows_cursors() -> None:
    clock = FakeClock()
    fake = FakeClient(clock, [])
    fake.pages = {
        None: (images("h1", "h2"), "c1"),
        "c1": (images("h3"), "c2"),
        "c2": (images("h4", "h2"), None),
    }
    fake.script.extend([fake.pages[None], transient()])  # page 2 fails once, then is asked again
    channel = make_channel(fake, clock)
    found = await clock.run(channel.list_all())
    assert set(found) == {"h1", "h2", "h3", "h4"}
    assert found["h3"].name == "h3.png"
    assert fake.afters == [None, "c1", "c1", "c2"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "pages",
    [
        {None: (images("h1"), "c1"), "c1": (images("h2"), "c1")},
        {None: (images("h1"), "c1"), "c1": (images("h2"), "c2"), "c2": (images("h3"), "c1")},
    ],
    ids=["same-cursor-again", "cursor-cycle"],
)
async def test_list_all_stops_on_a_repeated_cursor(pages: dict[str | None, Page]) -> None:
    clock = FakeClock()
    fake = FakeClient(clock)
    fake.pages = pages
    channel = make_channel(fake, clock)
    with pytest.raises(TransientError, match="cursor"):
        await clock.run(channel.list_all())
    assert len(fake.afters) == len(pages)  # each page once, then it stopped


# -- against the emulator ----------------------------------------------------------------


@pytest.fixture
def emu_clock() -> Iterator[tuple[EmulatorThread, FakeClock]]:
    """The emulator, its clock following the test's virtual clock."""
    clock = FakeClock()
    with EmulatorThread() as emu:

        def apply() -> None:
            emu.state.config.clock = clock.now

        emu.call(apply)
        yield emu, clock


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as s:
        yield s


def wired_channel(
    emu: EmulatorThread, clock: FakeClock, session: aiohttp.ClientSession
) -> AccountChannel:
    """A real GraphClient whose usage headers feed the channel, as the engine wires it."""
    channels: dict[str, AccountChannel] = {}

    def observe(account: str, headers: Mapping[str, str]) -> None:
        channels[account].observe_headers(headers)

    client = GraphClient(
        session,
        base_url=emu.base_url,
        api_version="v21.0",
        token=Token("EAAB-channel-token"),
        on_headers=observe,
    )
    channels[ACCOUNT] = make_channel(client, clock, rate=10.0, burst=10.0)
    return channels[ACCOUNT]


@pytest.mark.asyncio
async def test_emulator_storm_pauses_then_succeeds(
    emu_clock: tuple[EmulatorThread, FakeClock], session: aiohttp.ClientSession
) -> None:
    emu, clock = emu_clock
    channel = wired_channel(emu, clock, session)
    throttle(emu, ACCOUNT, 90)
    async with clock.auto_advance():
        uploaded = await channel.upload("a.png", png_bytes(1))
    log = emu.call(lambda: list(emu.state.requests))
    assert [r["code"] for r in log] == [80004, None]
    # The API said 2 minutes (90 s rounded up): the retry came after them, not before.
    assert log[1]["at"] >= 120
    assert uploaded.hash == emu.call(emu.state.images, ACCOUNT)[0]["hash"]
    assert channel.stats.throttles == 1


@pytest.mark.asyncio
async def test_emulator_usage_at_90_percent_slows_the_channel(
    emu_clock: tuple[EmulatorThread, FakeClock], session: aiohttp.ClientSession
) -> None:
    emu, clock = emu_clock
    emu.call(emu.state.set_limits, ACCOUNT, AccountLimits(max_score=10, enabled=True))
    channel = wired_channel(emu, clock, session)
    for _ in range(9):
        await channel.check()
    # The account's score is 9 of 10: 90 % in every answer's usage headers.
    assert channel.bucket.effective_rate == pytest.approx(4.0)


@pytest.mark.asyncio
async def test_emulator_list_all_reaches_every_image_once(
    emu_clock: tuple[EmulatorThread, FakeClock], session: aiohttp.ClientSession
) -> None:
    emu, clock = emu_clock

    def small_pages() -> None:
        emu.state.config.max_page_limit = 2

    emu.call(small_pages)
    hashes = [
        str(emu.call(emu.state.upload, ACCOUNT, f"i{n}.png", png_bytes(n))["hash"])
        for n in range(7)
    ]
    channel = wired_channel(emu, clock, session)
    async with clock.auto_advance():
        found = await channel.list_all()
    assert set(found) == set(hashes)
    lists = [r for r in emu.call(lambda: list(emu.state.requests)) if r["method"] == "GET"]
    assert len(lists) == 4


@pytest.mark.asyncio
async def test_emulator_auth_failure_is_sticky(
    emu_clock: tuple[EmulatorThread, FakeClock], session: aiohttp.ClientSession
) -> None:
    emu, clock = emu_clock

    def refuse() -> None:
        emu.state.config.valid_tokens = frozenset({"someone-else"})

    emu.call(refuse)
    channel = wired_channel(emu, clock, session)
    for _ in range(3):
        with pytest.raises(GraphError) as info:
            await channel.upload("a.png", png_bytes(1))
        assert isinstance(info.value, AuthError)
    assert len(emu.call(lambda: list(emu.state.requests))) == 1
