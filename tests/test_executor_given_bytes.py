"""Uploads of bytes the caller already read: the real executor, channel and emulator over HTTP.

The daemon reads a new file once and hands its bytes to the upload; the executor must send
exactly those bytes, and only when they are the content the plan hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from conftest import ACCOUNT, TOKEN, SyncEnv
from images import image_bytes

from syncd.backoff import Backoff
from syncd.channel import AccountChannel
from syncd.executor import VERIFY_INLINE_BYTES, Executor, PassReport, UploadContext
from syncd.graph import GraphClient
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
            yield Rig(Executor(manifest, channel, workers=2), manifest, env.folder())
        finally:
            manifest.close()


async def _upload(rig: Rig, name: str, content_md5: str, data: bytes | None) -> PassReport:
    report = PassReport(ACCOUNT)
    local = LocalFile(name, 1, 1, content_md5)
    ctx = UploadContext(root=rig.folder, preexisting=set(), intent_md5s=set())
    await rig.executor.upload_one(Upload(content_md5, (local,), name), ctx, report, data)
    return report


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [5000, VERIFY_INLINE_BYTES + 5000])
async def test_given_bytes_are_sent_as_they_are_without_reading_the_file(
    env: SyncEnv, rig: Rig, size: int
) -> None:
    data = image_bytes("png", 1, size=size)
    # No file on disk at all: the upload can only have used the bytes it was given.
    report = await _upload(rig, "a.png", md5(data), data)
    assert report.uploaded == 1, report
    assert report.changed == []
    assert [i["content_md5"] for i in env.images()] == [md5(data)]
    row = rig.manifest.file(ACCOUNT, "a.png")
    assert row is not None
    assert row.state is FileState.SYNCED
    assert row.md5 == md5(data)
    assert rig.manifest.intents(ACCOUNT) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [5000, VERIFY_INLINE_BYTES + 5000])
async def test_given_bytes_that_are_not_the_hashed_content_are_not_sent(
    env: SyncEnv, rig: Rig, size: int
) -> None:
    hashed = image_bytes("png", 1, size=size)
    stale = image_bytes("png", 2, size=size)
    (rig.folder / "a.png").write_bytes(hashed)  # even a file holding the right content is
    report = await _upload(rig, "a.png", md5(hashed), stale)  # not read instead
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
