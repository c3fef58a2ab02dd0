"""One account's door to the Graph API.

Every call waits for the account's token bucket (a read costs 1, a write 3), feeds the usage
headers back into that bucket, and is retried according to its error kind: transient errors
with exponential backoff and jitter, throttling by pausing this account only (the API's own
wait when it gives one), auth errors never (the account stops, and later calls fail at once
without touching the network). Nothing here is shared between accounts.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import structlog

from syncd.backoff import Backoff, throttle_pause
from syncd.errors import AuthError, ThrottledError, TransientError
from syncd.graph import HASHES_PER_READ, LIST_FIELDS, GraphClient, Uploaded
from syncd.models import RemoteImage, RemoteListing
from syncd.ratelimit import READ_COST, WRITE_COST, TokenBucket
from syncd.usage import parse_usage

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

MAX_CONSECUTIVE_THROTTLES = 8  # then the call fails for this pass (the file stays pending)
MAX_PAGES = 10_000  # a listing longer than this is a broken cursor, not an account

log = structlog.get_logger("syncd.channel")


@dataclass(slots=True)
class ChannelStats:
    """Counters for the report, `status` and metrics."""

    requests: int = 0
    retries: int = 0
    throttles: int = 0


class AccountChannel:
    """Rate-limited, retrying Graph calls for one ad account."""

    def __init__(
        self,
        account: str,
        client: GraphClient,
        bucket: TokenBucket,
        backoff: Backoff,
        *,
        gate: asyncio.Semaphore | None = None,
        rand: Callable[[], float] = random.random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.account = account
        self.bucket = bucket
        self.stats = ChannelStats()
        self.auth_error: AuthError | None = None
        self._client = client
        self._backoff = backoff
        self._rand = rand
        self._sleep = sleep
        # The process-wide limit on calls in flight (`workers`). Taken after the bucket, so a
        # throttled account waits in its own bucket without holding a slot others could use.
        self._gate = gate or asyncio.Semaphore(1_000_000)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Usage headers of any answer for this account slow (or speed) its bucket."""
        usage = parse_usage(headers, self.account)
        if usage.util_pct is not None:
            self.bucket.observe_utilisation(usage.util_pct)
        if usage.util_pct is not None and usage.util_pct >= 100 and usage.regain_seconds:
            self.bucket.pause_for(usage.regain_seconds)

    async def check(self) -> None:
        """Prove the token can read this account (auth errors surface here, once)."""
        await self._call(READ_COST, "check", lambda: self._client.check_account(self.account))

    async def upload(self, name: str, data: bytes) -> Uploaded:
        """POST one image; the answer's hash is what the manifest records."""
        return await self._call(
            WRITE_COST, "upload", lambda: self._client.upload(self.account, name, data)
        )

    async def list_all(self, fields: str = LIST_FIELDS) -> RemoteListing:
        """Every image of the account, page by page (each page is one read)."""
        images = RemoteListing()
        after: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page, after = await self._call(
                READ_COST,
                "list",
                functools.partial(self._client.list_page, self.account, after, fields),
            )
            images.update(page)
            if after is None:
                return images
            if after in seen:
                # The same cursor again would walk the same pages forever, spending the
                # account's quota; a partial listing must not pass for a complete one.
                raise TransientError("listing did not end (cursor loop)")
            seen.add(after)
        raise TransientError("listing did not end (cursor loop)")

    async def read(self, hashes: list[str]) -> dict[str, RemoteImage]:
        """Fresh state (status, creatives) of the named images."""
        found: dict[str, RemoteImage] = {}
        for start in range(0, len(hashes), HASHES_PER_READ):
            chunk = hashes[start : start + HASHES_PER_READ]
            page = await self._call(
                READ_COST, "read", functools.partial(self._client.read_hashes, self.account, chunk)
            )
            found.update((img.hash, img) for img in page)
        return found

    async def delete(self, image_hash: str) -> None:
        """DELETE one image by hash."""
        await self._call(
            WRITE_COST, "delete", lambda: self._client.delete_image(self.account, image_hash)
        )

    async def _call(self, cost: float, what: str, send: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        throttles = 0
        while True:
            self._raise_if_stopped()
            await self.bucket.acquire(cost)
            try:
                async with self._gate:
                    # Checked again: the account may have been stopped while this call
                    # waited for tokens or for a slot, and a refused token stays refused.
                    self._raise_if_stopped()
                    self.stats.requests += 1
                    return await send()
            except AuthError as exc:
                if self.auth_error is None:  # once; later calls only repeat the verdict
                    self.auth_error = exc
                    log.error("account_auth_failed", account=self.account, reason=exc.reason)
                    self.bucket.close(exc)  # calls queued for tokens fail now, not later
                raise
            except ThrottledError as exc:
                throttles += 1
                self.stats.throttles += 1
                if throttles >= MAX_CONSECUTIVE_THROTTLES:
                    raise
                self._pause(exc, throttles, what)
            except TransientError as exc:
                attempt += 1
                if not self._backoff.should_retry(attempt):
                    raise
                self.stats.retries += 1
                delay = self._backoff.delay(attempt, self._rand())
                log.warning(
                    "graph_retry",
                    account=self.account,
                    call=what,
                    attempt=attempt,
                    delay=round(delay, 2),
                    reason=exc.reason,
                )
                await self._sleep(delay)

    def _raise_if_stopped(self) -> None:
        if self.auth_error is not None:
            raise self.auth_error

    def _pause(self, exc: ThrottledError, throttles: int, what: str) -> None:
        pause = throttle_pause(exc.retry_after, throttles)
        self.bucket.note_throttled()
        self.bucket.pause_for(pause)
        log.warning(
            "account_throttled",
            account=self.account,
            call=what,
            pause_seconds=round(pause, 1),
            reason=exc.reason,
        )
