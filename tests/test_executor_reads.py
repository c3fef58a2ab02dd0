"""How uploads get their bytes: the real executor, channel and emulator over HTTP.

The daemon reads a new file once and hands its bytes to the upload; the executor must send
exactly those bytes, and only when they are the content the plan hashed. A reconcile's
workers read each small file while the upload before it is on the wire (read-ahead).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from conftest import ACCOUNT, TOKEN, SyncEnv
from images import image_bytes

import syncd.executor
from syncd.backoff import Backoff
from syncd.channel import AccountChannel
from syncd.executor import Executor, PassReport, UploadContext
from syncd.graph import GraphClient
from syncd.hashing import Hashed
from syncd.manifest import SqliteManifest
from syncd.models import FileState, LocalFile
from syncd.planner import Upload
from syncd.ratelimit import TokenBucket
from syncd.secrets import Token

pytestmark = pytest.mark.timeout(30)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class Rig:
    executor: Executor
    manifest: SqliteManifest
    folder: Path
    channel: AccountChannel


@pytest_asyncio.fixture
async def rig(env: SyncEnv) -> AsyncIterator[Rig]:
    async with aiohttp.ClientSession() as session:
        client = GraphClient(
            session, base_url=env.emu.base_url, api_version="v21.0", token=Token(TOKEN)
        )
        channel = AccountChannel(
            ACCOUNT, client, TokenBucket(1000.0, 100.0), Backoff(base=0.0, max_attempts=2)
        )
        manifest = SqliteManifest.open(env.manifest)
        try:
            yield Rig(Executor(manifest, channel, workers=2), manifest, env.folder(), channel)
        finally:
            manifest.close()


async def _upload(rig: Rig, name: str, content_md5: str, data: Hashed | None) -> PassReport:
    report = PassReport(ACCOUNT)
    local = LocalFile(name, 1, 1, content_md5)
    ctx = UploadContext(root=rig.folder, preexisting=set(), intent_md5s=set())
    await rig.executor.upload_one(Upload(content_md5, (local,), name), ctx, report, data)
    return report


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [5000, (1 << 20) + 5000])
async def test_given_bytes_are_sent_as_they_are_without_reading_the_file(
    env: SyncEnv, rig: Rig, size: int
) -> None:
    data = image_bytes("png", 1, size=size)
    # No file on disk at all: the upload can only have used the bytes it was given.
    report = await _upload(rig, "a.png", md5(data), Hashed.of(data))
    assert report.uploaded == 1, report
    assert report.changed == []
    assert [i["content_md5"] for i in env.images()] == [md5(data)]
    row = rig.manifest.file(ACCOUNT, "a.png")
    assert row is not None
    assert row.state is FileState.SYNCED
    assert row.md5 == md5(data)
    assert rig.manifest.intents(ACCOUNT) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [5000, (1 << 20) + 5000])
async def test_given_content_that_is_not_the_planned_content_is_not_sent(
    env: SyncEnv, rig: Rig, size: int
) -> None:
    hashed = image_bytes("png", 1, size=size)
    stale = image_bytes("png", 2, size=size)
    (rig.folder / "a.png").write_bytes(hashed)  # even a file holding the right content is
    report = await _upload(rig, "a.png", md5(hashed), Hashed.of(stale))  # not read instead
    assert report.uploaded == 0
    assert report.changed == ["a.png"]
    assert env.requests("POST") == []
    assert rig.manifest.file(ACCOUNT, "a.png") is None
    assert rig.manifest.intents(ACCOUNT) == []


@pytest.mark.asyncio
async def test_without_given_bytes_the_file_is_read_and_verified(env: SyncEnv, rig: Rig) -> None:
    hashed, now = image_bytes("png", 1), image_bytes("png", 2)
    (rig.folder / "a.png").write_bytes(now)  # changed after it was hashed
    report = await _upload(rig, "a.png", md5(hashed), None)
    assert report.changed == ["a.png"]
    assert env.requests("POST") == []
    report = await _upload(rig, "a.png", md5(now), None)
    assert report.uploaded == 1
    assert [i["content_md5"] for i in env.images()] == [md5(now)]


# -- read-ahead ---------------------------------------------------------------------------


def _plan(folder: Path, sizes: dict[str, int]) -> list[Upload]:
    uploads = []
    for seed, (name, size) in enumerate(sizes.items()):
        data = image_bytes("png", seed, size=size)
        (folder / name).write_bytes(data)
        local = LocalFile(name, len(data), 1, md5(data))
        uploads.append(Upload(local.md5, (local,), name))
    return uploads


def _trace(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record reads as they start, and each POST's start and end, in order."""
    events: list[str] = []
    read, upload = syncd.executor._read, rig.channel.upload

    async def traced_read(path: Path) -> Hashed | str:
        events.append(f"read {path.name}")
        return await read(path)

    async def traced_upload(name: str, data: bytes) -> object:
        events.append(f"post {name}")
        try:
            return await upload(name, data)
        finally:
            events.append(f"posted {name}")

    monkeypatch.setattr(syncd.executor, "_read", traced_read)
    monkeypatch.setattr(rig.channel, "upload", traced_upload)
    return events


def _context(rig: Rig) -> UploadContext:
    return UploadContext(root=rig.folder, preexisting=set(), intent_md5s=set())


@pytest.mark.asyncio
async def test_a_worker_reads_its_next_small_file_while_the_current_one_uploads(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(syncd.executor, "READ_AHEAD_BYTES", 10_000)
    uploads = _plan(rig.folder, {"a.png": 5000, "b.png": 5000, "c.png": 20_000, "d.png": 5000})
    events = _trace(rig, monkeypatch)
    report = PassReport(ACCOUNT)
    await Executor(rig.manifest, rig.channel, workers=1).upload_all(uploads, _context(rig), report)
    assert report.uploaded == 4, report
    # b is read before a's POST ends; c, over the limit, only once b's POST is done.
    assert events == [
        "read a.png",
        "read b.png",
        "post a.png",
        "posted a.png",
        "post b.png",
        "posted b.png",
        "read c.png",
        "read d.png",
        "post c.png",
        "posted c.png",
        "post d.png",
        "posted d.png",
    ]


@pytest.mark.asyncio
async def test_a_file_gone_before_its_read_ahead_is_changed_and_the_rest_upload(
    env: SyncEnv, rig: Rig
) -> None:
    uploads = _plan(rig.folder, {"a.png": 5000, "b.png": 5000, "c.png": 5000})
    (rig.folder / "b.png").unlink()
    report = PassReport(ACCOUNT)
    await Executor(rig.manifest, rig.channel, workers=1).upload_all(uploads, _context(rig), report)
    assert report.changed == ["b.png"]
    assert report.ok, report
    assert sorted(i["name"] for i in env.images()) == ["a.png", "c.png"]
    assert rig.manifest.intents(ACCOUNT) == []


@pytest.mark.asyncio
async def test_stopping_drops_the_read_ahead_and_leaves_no_task_behind(
    env: SyncEnv, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = _plan(rig.folder, {"a.png": 5000, "b.png": 5000, "c.png": 5000})
    executor = Executor(rig.manifest, rig.channel, workers=1)
    events = _trace(rig, monkeypatch)
    upload = rig.channel.upload

    async def stop_after(name: str, data: bytes) -> object:
        executor.stopping = True  # shutdown arrives while a's POST is in flight
        return await upload(name, data)

    monkeypatch.setattr(rig.channel, "upload", stop_after)
    report = PassReport(ACCOUNT)
    await executor.upload_all(uploads, _context(rig), report)
    await asyncio.sleep(0)  # a cancelled task finishes on the next loop turn
    assert [i["name"] for i in env.images()] == ["a.png"]
    assert "read b.png" in events, "b was never read ahead: the test proves nothing"
    assert asyncio.all_tasks() == {asyncio.current_task()}
