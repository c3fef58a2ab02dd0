"""A listing that misses images the account still has: a page short, or answered empty.

The plan takes a manifest image the listing does not show for one deleted remotely: it
forgets it and uploads its content again. From a short listing that would be a wasted upload
at best, and at worst an adopted image (on the account before syncd) recorded as syncd's
own, which makes it deletable. So the pass asks for such images by hash before planning.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ACCOUNT, SyncEnv, engine_pass
from images import png_bytes
from structlog.testing import capture_logs

from syncd.engine import PassOptions
from syncd.errors import TransientError
from syncd.graph import GraphClient
from syncd.models import RemoteImage

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def _origins(env: SyncEnv) -> list[tuple[str, str]]:
    rows = env.sql("SELECT hash, origin FROM images ORDER BY hash")
    return [(str(h), str(o)) for h, o in rows]


def _adopted_world(env: SyncEnv) -> None:
    """One file whose image was on the account before this manifest: adopted."""
    (env.folder() / "banner.png").write_bytes(png_bytes(1))
    engine_pass(env, PassOptions())  # puts the image on the account
    for suffix in ("", "-wal", "-shm"):
        env.manifest.with_name(env.manifest.name + suffix).unlink(missing_ok=True)
    engine_pass(env, PassOptions())
    assert [o for _, o in _origins(env)] == ["adopted"]


@pytest.fixture
def adopted_then_unlisted(
    env: SyncEnv, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[tuple[str, str]], int]:
    """An adopted image, then listings that come back empty: (image origins, POSTs so far)."""
    _adopted_world(env)
    before = _origins(env), len(env.requests("POST"))

    async def nothing(self: GraphClient, *args: Any, **kwargs: Any) -> Any:
        empty: list[RemoteImage] = []
        return empty, None

    monkeypatch.setattr(GraphClient, "list_page", nothing)
    return before


def test_an_image_missing_from_the_listing_is_asked_for_before_it_is_taken_for_deleted(
    env: SyncEnv, adopted_then_unlisted: tuple[list[tuple[str, str]], int]
) -> None:
    before, posts = adopted_then_unlisted
    with capture_logs() as logs:
        result = engine_pass(env, PassOptions())
    assert result.report.ok, result.report
    assert len(env.requests("POST")) == posts  # not uploaded again
    assert _origins(env) == before  # still adopted: never deletable
    [note] = [e for e in logs if e["event"] == "listing_incomplete"]
    assert (note["missing"], note["still_there"]) == (1, 1)


def test_an_image_the_account_no_longer_has_is_uploaded_again(env: SyncEnv) -> None:
    (env.folder() / "banner.png").write_bytes(png_bytes(2))
    engine_pass(env, PassOptions())
    [(image_hash, _)] = _origins(env)
    env.emu.call(env.emu.state.delete, ACCOUNT, image_hash)
    engine_pass(env, PassOptions())
    assert len(env.requests("POST")) == 2  # deleted by someone: the file brings it back
    assert [o for _, o in _origins(env)] == ["uploaded"]


def test_a_failing_confirmation_keeps_the_images_for_this_pass(
    env: SyncEnv,
    adopted_then_unlisted: tuple[list[tuple[str, str]], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before, posts = adopted_then_unlisted

    async def refused(self: GraphClient, *args: Any, **kwargs: Any) -> Any:
        raise TransientError("network error: ServerDisconnectedError")

    monkeypatch.setattr(GraphClient, "read_hashes", refused)
    with capture_logs() as logs:
        engine_pass(env, PassOptions(), max_attempts=1)
    assert len(env.requests("POST")) == posts
    assert _origins(env) == before
    assert [e["event"] for e in logs if e["event"] == "listing_unconfirmed"] == [
        "listing_unconfirmed"
    ]
