"""Uploads that start while the scan still hashes (syncd.early), against the real emulator.

The scan's hashing is held back from the test: after the first batch, every batch waits in its
worker thread until the emulator has answered a POST. Only uploads that start before the scan
ends can release it; without them the waits run out and the test says so.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ACCOUNT, SyncEnv, engine_pass
from images import png_bytes

from syncd import hashing
from syncd.engine import PassOptions
from syncd.errors import TransientError
from syncd.graph import GraphClient
from syncd.manifest import SqliteManifest
from syncd.models import UploadIntent
from syncd.progress import Progress

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HELD_BACK_SECONDS = 10.0  # how long a held batch waits for a POST before giving up


class HeldScan:
    """Holds every hashing batch after the first until a POST has been answered."""

    def __init__(self) -> None:
        self.posted = threading.Event()
        self.batches = 0
        self.waits: list[bool] = []  # one per held batch: did a POST release it?
        self._lock = threading.Lock()

    def batch(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any) -> Any:
            with self._lock:
                self.batches += 1
                first = self.batches == 1
            if not first:
                released = self.posted.wait(HELD_BACK_SECONDS)
                with self._lock:
                    self.waits.append(released)
            return original(*args)

        return held


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldScan:
    scan = HeldScan()
    monkeypatch.setattr(hashing, "_hash_batch_sync", scan.batch(hashing._hash_batch_sync))
    upload = GraphClient.upload

    async def noted(self: GraphClient, *args: Any, **kwargs: Any) -> Any:
        answer = await upload(self, *args, **kwargs)
        scan.posted.set()
        return answer

    monkeypatch.setattr(GraphClient, "upload", noted)
    return scan


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_uploads_start_while_the_scan_still_hashes(env: SyncEnv, held: HeldScan) -> None:
    folder = env.folder()
    for i in range(40):  # 16 files a batch: three batches, two of them held back
        (folder / f"img{i:02d}.png").write_bytes(png_bytes(i))
    progress = Progress(io.StringIO())
    opts = PassOptions(
        on_queued=progress.queued, on_planned=progress.planned, on_uploaded=progress.uploaded
    )
    result = engine_pass(env, opts)
    assert held.waits, "no batch was held back"
    assert all(held.waits), "the scan's held batches were not released by a POST"
    report = result.report
    assert report.ok, report
    assert (report.uploaded, report.linked) == (40, 0)  # counted once, not again by the plan
    assert len(env.requests("POST")) == 40
    assert len(env.images()) == 40
    assert result.plan is not None
    assert result.plan.uploads == []
    assert progress.planned_uploads == progress.done_uploads == 40
    rows = env.sql("SELECT state, COUNT(*) FROM files GROUP BY state")
    assert rows == [("synced", 40)]
    assert env.sql("SELECT COUNT(*) FROM intents") == [(0,)]


def test_no_upload_is_sent_before_the_listing_is_in(env: SyncEnv, held: HeldScan) -> None:
    folder = env.folder()
    for i in range(20):
        (folder / f"img{i:02d}.png").write_bytes(png_bytes(i))
    engine_pass(env, PassOptions())
    methods = [r["method"] for r in env.requests(account=ACCOUNT)]
    listing = [i for i, r in enumerate(env.requests(account=ACCOUNT)) if _is_listing(r)]
    first_post = methods.index("POST")
    assert listing, methods
    assert max(listing) < first_post, methods


def _is_listing(request: dict[str, Any]) -> bool:
    return bool(request["method"] == "GET" and request["path"].endswith("/adimages"))


def test_same_content_twice_is_one_upload_and_one_link(env: SyncEnv, held: HeldScan) -> None:
    folder = env.folder()
    same = png_bytes(7)
    (folder / "a.png").write_bytes(same)
    (folder / "b.png").write_bytes(same)
    (folder / "c.png").write_bytes(png_bytes(8))
    result = engine_pass(env, PassOptions())
    assert (result.report.uploaded, result.report.linked) == (2, 1), result.report
    assert len(env.requests("POST")) == 2
    rows = dict(env.sql("SELECT path, remote_hash FROM files"))
    assert rows[b"a.png"] == rows[b"b.png"] != rows[b"c.png"]


def test_a_permanent_failure_during_the_scan_is_reported_once(env: SyncEnv, held: HeldScan) -> None:
    folder = env.folder()
    (folder / "corrupt.png").write_bytes(png_bytes(3)[:40])  # right signature, truncated
    (folder / "fine.png").write_bytes(png_bytes(4))
    result = engine_pass(env, PassOptions())
    assert [path for path, _ in result.report.failed] == ["corrupt.png"]
    assert result.plan is not None
    assert result.plan.uploads == []
    assert len(env.requests("POST")) == 2
    assert env.sql("SELECT path, state FROM files ORDER BY path") == [
        (b"corrupt.png", "failed"),
        (b"fine.png", "synced"),
    ]


def test_content_with_an_open_intent_waits_for_the_plan(env: SyncEnv, held: HeldScan) -> None:
    """An earlier run's intent for this content is the plan's to resolve, not an early upload's:
    the image may already exist, and the listing decides whether it was ours."""
    folder = env.folder()
    data = png_bytes(5)
    (folder / "again.png").write_bytes(data)
    manifest = SqliteManifest.open(env.manifest)  # a run that died right after its intent
    try:
        manifest.begin_upload(UploadIntent(ACCOUNT, _md5(data), "again.png", "again.png", 0.0))
    finally:
        manifest.close()
    queued: list[str] = []
    result = engine_pass(env, PassOptions(on_queued=lambda up: queued.append(up.path)))
    assert queued == []
    assert result.report.ok, result.report
    assert result.report.uploaded == 1  # by the plan, after the intent was dropped
    assert [i["name"] for i in env.images()] == ["again.png"]


def test_a_transient_failure_during_the_scan_waits_for_the_next_pass(
    env: SyncEnv, held: HeldScan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retried as often as any upload is, then left pending: not tried a second time by the
    plan of the same pass (which would double the retries and the report)."""
    folder = env.folder()
    (folder / "flaky.png").write_bytes(png_bytes(1))
    (folder / "fine.png").write_bytes(png_bytes(2))
    tries: list[str] = []
    upload = GraphClient.upload

    async def flaky(self: GraphClient, account: str, name: str, data: bytes) -> Any:
        tries.append(name)
        if name == "flaky.png":
            raise TransientError("network error: ServerDisconnectedError")
        return await upload(self, account, name, data)

    monkeypatch.setattr(GraphClient, "upload", flaky)
    result = engine_pass(env, PassOptions(), max_attempts=2)
    assert sorted(tries) == ["fine.png", "flaky.png", "flaky.png"]  # two attempts, one try
    assert [path for path, _ in result.report.failed] == ["flaky.png"]
    assert env.sql("SELECT path, state FROM files ORDER BY path") == [
        (b"fine.png", "synced"),
        (b"flaky.png", "pending"),
    ]
