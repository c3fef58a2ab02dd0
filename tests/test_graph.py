"""The Graph client over real loopback HTTP: the bundled emulator, and a tiny hostile server.

Every failure path runs with a recognisable token, and each error it raises is checked for
the token, the app secret's proof and the request URL in its message, repr and traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import set_faults, set_tokens, throttle
from hypothesis import given
from hypothesis import strategies as st
from images import image_bytes, jpeg_bytes, png_bytes

from syncd import graph
from syncd.emulator import AccountLimits, EmulatorConfig, EmulatorThread
from syncd.errors import (
    AuthError,
    ErrorBody,
    GraphError,
    PermanentError,
    ThrottledError,
    TransientError,
    classify,
    parse_error_body,
)
from syncd.graph import MAX_NAME, GraphClient, list_fields, upload_name
from syncd.secrets import Token, appsecret_proof

TOKEN = "EAAB-graph-secret-Zq8W3-must-never-leak"
APP_SECRET = "app-secret-Kx7-never-leak"
PROOF = appsecret_proof(Token(TOKEN), Token(APP_SECRET))
ACCOUNT = "1234567890"
API = "v21.0"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def make_client(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    token: str = TOKEN,
    app_secret: str | None = None,
    timeout: float = 10.0,
    on_headers: graph.HeadersObserver | None = None,
) -> GraphClient:
    return GraphClient(
        session,
        base_url=base_url,
        api_version=API,
        token=Token(token),
        app_secret=Token(app_secret) if app_secret is not None else None,
        timeout=timeout,
        on_headers=on_headers,
    )


def assert_clean(exc: BaseException, *urls: str) -> None:
    """Nothing the error shows (message, repr, reason, formatted traceback) holds a secret."""
    texts = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    if isinstance(exc, GraphError):
        texts += [exc.message, exc.reason]
    for text in texts:
        for secret in (TOKEN, APP_SECRET, PROOF, *urls):
            assert secret not in text, (secret, text)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as s:
        yield s


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread() as running:
        yield running


@pytest.fixture
def client(emu: EmulatorThread, session: aiohttp.ClientSession) -> GraphClient:
    return make_client(session, emu.base_url)


def requests_of(emu: EmulatorThread) -> list[dict[str, Any]]:
    return emu.call(lambda: [dict(r) for r in emu.state.requests])


def seed_images(emu: EmulatorThread, count: int, account: str = ACCOUNT) -> list[str]:
    """Images stored straight into the emulator (no POST); their hashes, oldest first."""
    entries = [
        emu.call(emu.state.upload, account, f"seed{n}.png", png_bytes(n)) for n in range(count)
    ]
    return [str(e["hash"]) for e in entries]


def configure(emu: EmulatorThread, **changes: Any) -> None:
    def apply() -> None:
        for key, value in changes.items():
            setattr(emu.state.config, key, value)

    emu.call(apply)


@contextlib.asynccontextmanager
async def fake_graph(handler: Handler) -> AsyncIterator[str]:
    """A tiny HTTP server on 127.0.0.1 answering every path with `handler`; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def answer(
    body: bytes | str, status: int = 200, content_type: str = "application/json", **headers: str
) -> Handler:
    raw = body.encode() if isinstance(body, str) else body

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            body=raw, status=status, headers={"Content-Type": content_type, **headers}
        )

    return handle


async def failure_from(handler: Handler, call: str = "check", **client_kw: Any) -> GraphError:
    """The error one call raises against `handler`; checked to be clean of secrets."""
    async with fake_graph(handler) as base, aiohttp.ClientSession(trust_env=False) as s:
        client = make_client(s, base, app_secret=APP_SECRET, **client_kw)
        with pytest.raises(GraphError) as info:
            await run_call(client, call)
    assert_clean(info.value, base, f"{base}/{API}/act_{ACCOUNT}")
    return info.value


async def run_call(client: GraphClient, call: str) -> object:
    if call == "check":
        return await client.check_account(ACCOUNT)
    if call == "upload":
        return await client.upload(ACCOUNT, "a.png", png_bytes(1))
    if call == "list":
        return await client.list_page(ACCOUNT)
    if call == "read":
        return await client.read_hashes(ACCOUNT, ["h1", "h2"])
    assert call == "delete"
    await client.delete_image(ACCOUNT, "h1")
    return None


async def outcome_of(client: GraphClient, call: str) -> GraphError | None:
    """The GraphError a call raised, or None if it succeeded."""
    try:
        await run_call(client, call)
    except GraphError as exc:
        return exc
    return None


CALLS = ["check", "upload", "list", "read", "delete"]


# -- upload names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("deep/dir/photo.PNG", "photo.PNG"),
        ("café 写真 ☃.jpg", "café 写真 ☃.jpg"),
        ("tab\there.jpg", "tab_here.jpg"),
        ("new\r\nline.jpg", "new__line.jpg"),
        ('say "cheese".jpg', "say _cheese_.jpg"),
        ("back\\slash.jpg", "back_slash.jpg"),
        ("nul\x00\x7f\u200b\u2028.gif", "nul____.gif"),
        ("it's; a=b.png", "it's; a=b.png"),
        (b"bad\xff\xfe.jpg".decode("utf-8", "surrogateescape"), "bad__.jpg"),
    ],
)
def test_upload_name_cleans(path: str, expected: str) -> None:
    assert upload_name(path) == expected
    upload_name(path).encode("utf-8")  # sendable as a raw UTF-8 filename


def test_upload_name_shortens_keeping_the_extension() -> None:
    long = "x" * 150 + ".jpeg"
    name = upload_name("dir/" + long)
    assert len(name) == MAX_NAME == 100
    assert name == "x" * 95 + ".jpeg"
    assert upload_name("y" * 100 + ".png") == "y" * 96 + ".png"
    assert upload_name("z" * 96 + ".png") == "z" * 96 + ".png"  # exactly 100: kept whole
    assert upload_name("é" * 120 + ".tif").endswith("é.tif")
    # No usable extension: a plain cut.
    assert upload_name("n" * 150) == "n" * 100
    assert upload_name("a." + "e" * 150) == ("a." + "e" * 150)[:100]


_ANY_CHAR = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, exclude_categories=()),
    st.sampled_from('"\\\r\n\t\x00/.'),
)


@given(
    folder=st.text(_ANY_CHAR, max_size=30),
    stem=st.text(_ANY_CHAR, max_size=300),
    ext=st.sampled_from(["jpg", "JPEG", "png", "gif", "bmp", "tif", "tiff", "x" * 20]),
)
def test_upload_name_properties(folder: str, stem: str, ext: str) -> None:
    name = upload_name(f"{folder}/{stem}.{ext}")
    assert len(name) <= MAX_NAME
    assert name.endswith("." + ext)  # a short extension always survives
    assert "/" not in name
    assert all(ch.isprintable() and ch not in '"\\' for ch in name)
    name.encode("utf-8")  # no lone surrogates
    assert upload_name(name) == name  # a clean name stays as it is


@given(st.text(_ANY_CHAR, max_size=400))
def test_upload_name_never_too_long(path: str) -> None:
    name = upload_name(path)
    assert len(name) <= MAX_NAME
    name.encode("utf-8")
    assert all(ch.isprintable() and ch not in '"\\' for ch in name)


# -- uploads against the emulator --------------------------------------------------------


@pytest.mark.asyncio
async def test_upload_keeps_the_name_and_returns_the_api_hash(
    emu: EmulatorThread, client: GraphClient
) -> None:
    content = jpeg_bytes(5)
    uploaded = await client.upload(ACCOUNT, "summer sale.jpg", content)
    (stored,) = emu.call(emu.state.images, ACCOUNT)
    assert uploaded.hash == stored["hash"]
    assert uploaded.hash != md5(content)  # the API's hash, never the local MD5
    assert uploaded.name == stored["name"] == "summer sale.jpg"
    assert stored["content_md5"] == md5(content)
    (post,) = requests_of(emu)
    assert (post["method"], post["path"], post["status"]) == (
        "POST",
        f"/{API}/act_{ACCOUNT}/adimages",
        200,
    )
    # Same bytes again: same hash (content-addressed), one image.
    again = await client.upload(ACCOUNT, "copy.jpg", content)
    assert again.hash == uploaded.hash
    assert len(emu.call(emu.state.images, ACCOUNT)) == 1


@pytest.mark.asyncio
async def test_a_large_image_uploads_without_warnings(
    emu: EmulatorThread, client: GraphClient
) -> None:
    # Feed images run to 30 MB. Warnings are errors here, as in the daemon's own tests:
    # aiohttp warns about big raw-bytes bodies (> 1 MiB) blocking the loop.
    content = image_bytes("jpeg", 77, size=5 * 1024 * 1024 + 3)
    uploaded = await client.upload(ACCOUNT, "big.jpg", content)
    (stored,) = emu.call(emu.state.images, ACCOUNT)
    assert stored["hash"] == uploaded.hash
    assert stored["content_md5"] == md5(content)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name",
    [
        "café été.jpg",
        "写真 ☃ 😀.png",
        "Prix; réduit = 50%.jpg",
        "ÅÄÖ åäö.JPEG",
        upload_name("evil\r\nContent-Type: text/plain\r\n\r\n.jpg"),
        upload_name("q" * 140 + "ü.png"),
    ],
)
async def test_unicode_names_arrive_unencoded(
    emu: EmulatorThread, client: GraphClient, name: str
) -> None:
    kind = "png" if name.lower().endswith(".png") else "jpeg"
    content = png_bytes(2) if kind == "png" else jpeg_bytes(2)
    uploaded = await client.upload(ACCOUNT, name, content)
    (stored,) = emu.call(emu.state.images, ACCOUNT)
    assert stored["name"] == uploaded.name == name  # not "caf%C3%A9.jpg"


class _Sink:
    """Collects what aiohttp's multipart writer writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


@given(
    name=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
    data=st.binary(max_size=300),
)
def test_the_inline_body_is_the_one_aiohttp_writes(name: str, data: bytes) -> None:
    # The reference: aiohttp's writer with raw UTF-8 filenames, and the same boundary.
    form = aiohttp.FormData(quote_fields=False)
    sink = _Sink()
    try:
        form.add_field("filename", data, filename=name, content_type="application/octet-stream")
        writer = form()
        assert isinstance(writer, aiohttp.MultipartWriter)
        asyncio.run(writer.write(sink))  # type: ignore[arg-type]
    except ValueError:  # a control character: header injection, refused by both
        with pytest.raises(ValueError, match="control character"):
            graph.multipart_body(name, data, "b0undary")
        return
    assert graph.multipart_body(name, data, writer.boundary) == bytes(sink.data)


@pytest.mark.asyncio
@pytest.mark.parametrize("extra", [-1, 0, 1])
async def test_bodies_either_side_of_the_inline_limit_arrive_whole(
    emu: EmulatorThread, client: GraphClient, extra: int
) -> None:
    # Up to INLINE_IMAGE_BYTES the body is one buffer; above, aiohttp's writer streams it.
    content = image_bytes("png", 9, size=graph.INLINE_IMAGE_BYTES + extra)
    uploaded = await client.upload(ACCOUNT, 'a "quoted" \\ name.png', content)
    (stored,) = emu.call(emu.state.images, ACCOUNT)
    assert stored["content_md5"] == md5(content)
    assert stored["name"] == uploaded.name == 'a "quoted" \\ name.png'


# -- reading -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_page_walks_every_image_exactly_once(
    emu: EmulatorThread, client: GraphClient
) -> None:
    configure(emu, max_page_limit=2)
    hashes = seed_images(emu, 7)
    deleted = str(emu.call(emu.state.upload, ACCOUNT, "gone.png", png_bytes(99))["hash"])
    emu.call(emu.state.delete, ACCOUNT, deleted)
    seen: list[str] = []
    pages = 0
    after: str | None = None
    while True:
        page, after = await client.list_page(ACCOUNT, after)
        pages += 1
        assert len(page) <= 2
        assert all(img.status == "ACTIVE" for img in page)
        assert not any(img.name or img.created_time for img in page)  # asked for when needed
        seen += [img.hash for img in page]
        if after is None:
            break
    assert pages == 4
    assert sorted(seen) == sorted(hashes)
    assert len(seen) == len(set(seen))
    assert deleted not in seen
    page, _ = await client.list_page(ACCOUNT, None, list_fields(names=True))
    assert page
    assert all(img.name.startswith("seed") and not img.created_time for img in page)
    page, _ = await client.list_page(ACCOUNT, None, list_fields(created=True))
    assert all(img.name.startswith("seed") and img.created_time for img in page)


@pytest.mark.asyncio
async def test_list_page_of_an_empty_account(client: GraphClient) -> None:
    assert await client.list_page(ACCOUNT) == ([], None)


@pytest.mark.asyncio
async def test_read_hashes_reports_creatives(emu: EmulatorThread, client: GraphClient) -> None:
    free, used, grouped = seed_images(emu, 3)
    emu.call(emu.state.set_creatives, ACCOUNT, used, ["23850000001", "23850000002"])
    emu.call(emu.state.set_creatives, ACCOUNT, grouped, [], in_adgroups=True)
    found = await client.read_hashes(ACCOUNT, [free, used, grouped, "0" * 32])
    by_hash = {img.hash: img for img in found}
    assert set(by_hash) == {free, used, grouped}  # unknown hashes are simply absent
    assert by_hash[used].creatives == ("23850000001", "23850000002")
    assert by_hash[used].in_use
    assert by_hash[grouped].in_use
    assert by_hash[grouped].in_adgroups
    assert by_hash[grouped].creatives == ()
    assert not by_hash[free].in_use
    assert by_hash[free].status == "ACTIVE"


@pytest.mark.asyncio
async def test_read_hashes_limits(emu: EmulatorThread, client: GraphClient) -> None:
    assert await client.read_hashes(ACCOUNT, []) == []
    assert requests_of(emu) == []  # nothing to ask, nothing sent
    with pytest.raises(ValueError, match="at most"):
        await client.read_hashes(ACCOUNT, [f"{n:032x}" for n in range(graph.HASHES_PER_READ + 1)])


@pytest.mark.asyncio
async def test_read_hashes_shows_deleted_images(emu: EmulatorThread, client: GraphClient) -> None:
    (h,) = seed_images(emu, 1)
    await client.delete_image(ACCOUNT, h)
    (img,) = await client.read_hashes(ACCOUNT, [h])
    assert img.status == "DELETED"


@pytest.mark.asyncio
async def test_check_account(client: GraphClient) -> None:
    body = await client.check_account(ACCOUNT)
    assert body["account_id"] == ACCOUNT


# -- deleting ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delete_success_and_in_use_refusal(emu: EmulatorThread, client: GraphClient) -> None:
    free, used = seed_images(emu, 2)
    emu.call(emu.state.set_creatives, ACCOUNT, used, ["23850000009"])
    await client.delete_image(ACCOUNT, free)
    statuses = {i["hash"]: i["status"] for i in emu.call(emu.state.images, ACCOUNT, True)}
    assert statuses == {free: "DELETED", used: "ACTIVE"}

    with pytest.raises(PermanentError) as info:
        await client.delete_image(ACCOUNT, used)
    assert info.value.code == 100
    assert "creative" in info.value.message
    assert_clean(info.value, emu.base_url)
    with pytest.raises(PermanentError):  # already gone
        await client.delete_image(ACCOUNT, free)
    statuses = {i["hash"]: i["status"] for i in emu.call(emu.state.images, ACCOUNT, True)}
    assert statuses == {free: "DELETED", used: "ACTIVE"}


@pytest.mark.asyncio
async def test_delete_without_success_is_not_taken_for_done() -> None:
    error = await failure_from(answer('{"success": false}'), "delete")
    assert isinstance(error, TransientError)


# -- the token and appsecret_proof -------------------------------------------------------


@pytest.mark.asyncio
async def test_token_travels_only_in_the_authorization_header(
    emu: EmulatorThread, client: GraphClient
) -> None:
    uploaded = await client.upload(ACCOUNT, "a.png", png_bytes(1))
    await client.check_account(ACCOUNT)
    await client.list_page(ACCOUNT)
    await client.read_hashes(ACCOUNT, [uploaded.hash])
    await client.delete_image(ACCOUNT, uploaded.hash)
    log = requests_of(emu)
    assert [r["method"] for r in log] == ["POST", "GET", "GET", "GET", "DELETE"]
    for record in log:
        assert record["status"] == 200
        assert record["token_in_url"] is False
        assert record["token_source"] == "header"
        assert TOKEN not in record["query"]
        assert "appsecret_proof" not in record["query"]  # no secret configured, no proof


@pytest.mark.asyncio
async def test_the_request_carries_the_token_as_a_bearer_header() -> None:
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Authorization", ""), str(request.url)))
        return web.json_response({"data": []})

    async with fake_graph(handle) as base, aiohttp.ClientSession(trust_env=False) as s:
        await make_client(s, base, app_secret=APP_SECRET).list_page(ACCOUNT)
    ((auth, url),) = seen
    assert auth == f"Bearer {TOKEN}"
    assert TOKEN not in url
    assert f"appsecret_proof={PROOF}" in url


@pytest.mark.asyncio
async def test_appsecret_proof_sent_when_a_secret_is_configured(
    session: aiohttp.ClientSession,
) -> None:
    with EmulatorThread(EmulatorConfig(app_secret=APP_SECRET)) as emu:
        good = make_client(session, emu.base_url, app_secret=APP_SECRET)
        uploaded = await good.upload(ACCOUNT, "a.png", png_bytes(1))
        await good.list_page(ACCOUNT)
        await good.read_hashes(ACCOUNT, [uploaded.hash])
        await good.delete_image(ACCOUNT, uploaded.hash)

        for secret in ("wrong-secret", None):
            bad = make_client(session, emu.base_url, app_secret=secret)
            with pytest.raises(PermanentError) as info:
                await bad.check_account(ACCOUNT)
            assert info.value.code == 100
            assert "appsecret_proof" in info.value.message
            assert_clean(info.value, emu.base_url)
        log = requests_of(emu)
    assert [r["status"] for r in log] == [200, 200, 200, 200, 400, 400]
    assert all(f"appsecret_proof={PROOF}" in r["query"] for r in log[:4])
    assert all(r["token_source"] == "header" and not r["token_in_url"] for r in log)


# -- errors from the emulator ------------------------------------------------------------


@pytest.mark.asyncio
async def test_invalid_expired_and_denied_tokens_are_auth_errors(
    emu: EmulatorThread, client: GraphClient
) -> None:
    set_tokens(emu, {"some-other-token"})
    with pytest.raises(AuthError) as info:
        await client.check_account(ACCOUNT)
    assert (info.value.code, info.value.subcode) == (190, None)
    assert_clean(info.value, emu.base_url)

    set_tokens(emu, {TOKEN})
    configure(emu, expired_tokens=frozenset({TOKEN}))
    with pytest.raises(AuthError) as info:
        await client.upload(ACCOUNT, "a.png", png_bytes(1))
    assert (info.value.code, info.value.subcode) == (190, 463)
    assert_clean(info.value, emu.base_url)

    configure(emu, expired_tokens=frozenset(), denied_accounts=frozenset({ACCOUNT}))
    with pytest.raises(AuthError) as info:
        await client.list_page(ACCOUNT)
    assert info.value.code == 200
    assert_clean(info.value, emu.base_url)


@pytest.mark.asyncio
async def test_throttle_storm_gives_the_wait_from_the_usage_headers(
    emu: EmulatorThread, client: GraphClient
) -> None:
    throttle(emu, ACCOUNT, 90)
    with pytest.raises(ThrottledError) as info:
        await client.upload(ACCOUNT, "a.png", png_bytes(1))
    err = info.value
    assert (err.code, err.subcode) == (80004, 2446079)
    # estimated_time_to_regain_access is in minutes: 90 s rounds up to 2 min, 120 s.
    assert err.retry_after == 120
    assert_clean(err, emu.base_url)


@pytest.mark.asyncio
async def test_score_block_is_throttled(emu: EmulatorThread, client: GraphClient) -> None:
    configure(emu, limits=AccountLimits(max_score=2, block_seconds=300, enabled=True))
    await client.list_page(ACCOUNT)
    await client.list_page(ACCOUNT)
    with pytest.raises(ThrottledError) as info:
        await client.list_page(ACCOUNT)
    assert info.value.code == 80004
    assert info.value.retry_after is not None
    assert 240 <= info.value.retry_after <= 300


@pytest.mark.asyncio
async def test_injected_server_errors_are_transient(
    emu: EmulatorThread, client: GraphClient
) -> None:
    set_faults(emu, error_rate=1.0)
    codes = []
    for call in ("upload", "check"):
        with pytest.raises(TransientError) as info:
            await run_call(client, call)
        assert_clean(info.value, emu.base_url)
        codes.append((info.value.code, info.value.status))
    assert codes == [(1, 500), (2, 503)]
    assert emu.call(emu.state.images, ACCOUNT) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("call", CALLS)
async def test_dropped_connection_is_transient_and_clean(
    emu: EmulatorThread, client: GraphClient, call: str
) -> None:
    set_faults(emu, drop_rate=1.0)
    with pytest.raises(TransientError) as info:
        await run_call(client, call)
    assert info.value.message.startswith("network error")
    assert_clean(info.value, emu.base_url)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "content", "subcode"),
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n truncated", 1487197),
        ("notes.txt", png_bytes(1), 1487411),
    ],
)
async def test_refused_images_are_permanent(
    emu: EmulatorThread, client: GraphClient, name: str, content: bytes, subcode: int
) -> None:
    with pytest.raises(PermanentError) as info:
        await client.upload(ACCOUNT, name, content)
    assert (info.value.code, info.value.subcode, info.value.status) == (100, subcode, 400)
    assert f"/{subcode}" in info.value.reason
    assert_clean(info.value, emu.base_url)


@pytest.mark.asyncio
async def test_usage_headers_reach_the_observer(
    emu: EmulatorThread, session: aiohttp.ClientSession
) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    def observe(account: str, headers: Mapping[str, str]) -> None:
        seen.append((account, dict(headers)))

    client = make_client(session, emu.base_url, on_headers=observe)
    await client.list_page(ACCOUNT)
    set_tokens(emu, set())
    with pytest.raises(AuthError):
        await client.list_page(ACCOUNT)
    assert [account for account, _ in seen] == [ACCOUNT, ACCOUNT]
    assert "X-Ad-Account-Usage" in seen[0][1]


# -- the one mapping of errors -----------------------------------------------------------


def body(code: int | None, subcode: int | None = None, transient: bool = False) -> ErrorBody:
    return ErrorBody(f"(#{code}) boom", code, subcode, transient)


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80000, 80004, 80008, 80014])
def test_classify_throttle_codes(code: int) -> None:
    err = classify(400, body(code, 2446079), retry_after=42.0)
    assert isinstance(err, ThrottledError)
    assert (err.code, err.subcode, err.status, err.retry_after) == (code, 2446079, 400, 42.0)
    assert classify(400, body(code)).retry_after is None  # type: ignore[attr-defined]
    # Throttling wins even when Meta flags it transient or answers 5xx.
    assert isinstance(classify(500, body(code, transient=True)), ThrottledError)


def test_classify_http_429() -> None:
    for error in (classify(429, None, 30.0), classify(429, body(None), 30.0)):
        assert isinstance(error, ThrottledError)
        assert error.retry_after == 30.0
        assert error.status == 429


@pytest.mark.parametrize("code", [190, 200, 210, 270, 299])
def test_classify_auth_codes(code: int) -> None:
    err = classify(400, body(code, 463))
    assert type(err) is AuthError
    assert (err.code, err.subcode) == (code, 463)
    assert type(classify(500, body(code))) is AuthError


@pytest.mark.parametrize(
    ("status", "error_body"),
    [
        (500, body(1)),
        (503, body(2)),
        (400, body(1)),
        (400, body(2)),
        (400, body(100, transient=True)),
        (400, body(368, transient=True)),
        (500, body(None)),
        (502, None),
        (503, None),
        (504, None),
        (408, None),
    ],
)
def test_classify_transient(status: int, error_body: ErrorBody | None) -> None:
    assert type(classify(status, error_body)) is TransientError


@pytest.mark.parametrize(
    ("status", "error_body"),
    [
        (400, body(100)),
        (400, body(100, 1487197)),
        (400, body(100, 1487411)),
        (400, body(368)),
        (400, body(3)),
        (400, body(300)),
        (400, body(79999)),
        (400, body(80015)),
        (400, body(None)),
        (400, None),
        (404, None),
        (200, None),
    ],
)
def test_classify_permanent(status: int, error_body: ErrorBody | None) -> None:
    assert type(classify(status, error_body)) is PermanentError


def test_reason_names_code_subcode_or_status() -> None:
    assert classify(400, body(100, 1487197)).reason == "(#100) boom (code 100/1487197)"
    assert classify(502, None).reason == "HTTP 502 without a Graph error body (http 502)"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (None, None),
        ([1, 2], None),
        ("text", None),
        ({"data": []}, None),
        ({"error": "nope"}, None),
        ({"error": {}}, ErrorBody("unknown Graph error", None, None, False)),
        (
            {"error": {"message": 5, "code": "190", "error_subcode": True, "is_transient": 1}},
            ErrorBody("unknown Graph error", None, None, False),
        ),
        (
            {"error": {"message": "m", "code": True, "error_subcode": 33, "is_transient": True}},
            ErrorBody("m", None, 33, True),
        ),
        ({"error": {"message": "m", "code": 17}}, ErrorBody("m", 17, None, False)),
    ],
)
def test_parse_error_body(payload: object, expected: ErrorBody | None) -> None:
    assert parse_error_body(payload) == expected


# -- what a hostile or broken server answers ---------------------------------------------


def usage(minutes: int) -> str:
    entry = {
        "type": "ads_management",
        "call_count": 100,
        "estimated_time_to_regain_access": minutes,
    }
    return json.dumps({ACCOUNT: [entry]})


THROTTLE_BODY = json.dumps({"error": {"message": "(#80004) too many calls", "code": 80004}})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("handler", "retry_after"),
    [
        # The business header counts minutes.
        (answer(THROTTLE_BODY, 400, **{"X-Business-Use-Case-Usage": usage(3)}), 180.0),
        # The account header counts seconds, and only means "blocked" at 100 %.
        (
            answer(
                THROTTLE_BODY,
                400,
                **{"X-Ad-Account-Usage": '{"acc_id_util_pct": 100, "reset_time_duration": 42}'},
            ),
            42.0,
        ),
        (
            answer(
                THROTTLE_BODY,
                400,
                **{"X-Ad-Account-Usage": '{"acc_id_util_pct": 40, "reset_time_duration": 42}'},
            ),
            None,
        ),
        (answer("", 429, "text/plain", **{"Retry-After": "17"}), 17.0),
        (answer("<html>slow down</html>", 429, "text/html", **{"Retry-After": "2.5"}), 2.5),
        (
            answer(
                "",
                429,
                **{"Retry-After": "17", "X-Business-Use-Case-Usage": usage(1)},
            ),
            60.0,
        ),
        (answer("", 429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), None),
        (answer("", 429, **{"Retry-After": "-5"}), None),
        (answer("", 429, **{"Retry-After": "nan"}), None),
        (answer("", 429, **{"X-Business-Use-Case-Usage": "{not json"}), None),
        (answer(THROTTLE_BODY, 400), None),
    ],
)
async def test_throttle_answers_carry_the_wait(handler: Handler, retry_after: float | None) -> None:
    error = await failure_from(handler)
    assert isinstance(error, ThrottledError)
    assert error.retry_after == retry_after


def _drip(declared: bool) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        size = graph.MAX_BODY + 1024 * 1024
        if declared:
            return web.Response(body=b" " * size, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(chunk) + 1):
                await resp.write(chunk)
        return resp

    return handle


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.asyncio
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        pytest.param(
            answer("<html><h1>502 Bad Gateway</h1></html>", 502, "text/html"),
            TransientError,
            id="proxy-502-html",
        ),
        pytest.param(
            answer("<html><h1>503 Service Unavailable</h1></html>", 503, "text/html"),
            TransientError,
            id="proxy-503-html",
        ),
        pytest.param(
            answer("<html>Access denied by proxy policy</html>", 403, "text/html"),
            TransientError,
            id="proxy-403-html",
        ),
        pytest.param(
            answer("<html>Unauthorized</html>", 401, "text/html"),
            TransientError,
            id="proxy-401-html",
        ),
        pytest.param(
            answer("<html>captive portal</html>", 200, "text/html"),
            TransientError,
            id="captive-portal-200-html",
        ),
        pytest.param(answer("", 200), TransientError, id="empty-200"),
        pytest.param(answer("", 500), TransientError, id="empty-500"),
        pytest.param(answer('{"data": [', 200), TransientError, id="truncated-json-200"),
        pytest.param(answer('{"error": {"code": 1', 500), TransientError, id="truncated-json-500"),
        pytest.param(answer(b"\xff\xfe\x00garbage", 200), TransientError, id="not-utf8"),
        pytest.param(answer(png_bytes(1), 200, "image/png"), TransientError, id="png-content-type"),
        pytest.param(answer(_nested(200_000), 200), TransientError, id="deeply-nested"),
        pytest.param(
            answer('{"error": {"code": 100', 400), PermanentError, id="truncated-json-400"
        ),
        pytest.param(
            answer("<html>not found</html>", 404, "text/html"), PermanentError, id="html-404"
        ),
        pytest.param(answer("[1, 2, 3]", 200), (TransientError, PermanentError), id="json-list"),
        pytest.param(
            answer('"just a string"', 200), (TransientError, PermanentError), id="json-string"
        ),
        pytest.param(answer("{}", 200), None, id="empty-object"),
        pytest.param(
            answer('{"data": "nope", "images": []}', 200),
            None,  # the account read takes any object; the others refuse it cleanly
            id="wrong-shapes",
        ),
        pytest.param(
            answer('{"images": {"a": {"hash": 5}}, "data": [7]}', 200), None, id="wrong-field-types"
        ),
        pytest.param(_drip(declared=True), TransientError, id="huge-declared"),
        pytest.param(_drip(declared=False), TransientError, id="huge-chunked"),
    ],
)
async def test_broken_answers_become_clean_graph_errors(
    handler: Handler, kind: type[GraphError] | tuple[type[GraphError], ...] | None, call: str
) -> None:
    async with fake_graph(handler) as base, aiohttp.ClientSession(trust_env=False) as s:
        client = make_client(s, base, app_secret=APP_SECRET)
        # Anything but a GraphError (KeyError, ValueError, aiohttp's own) escapes and fails.
        error = await outcome_of(client, call)
    if error is not None:
        assert_clean(error, base)
        assert not isinstance(error, AuthError)  # nobody said the token was refused
    assert kind is None or isinstance(error, kind), error


@pytest.mark.asyncio
async def test_a_json_answer_under_a_legacy_content_type_is_read() -> None:
    entry = {"hash": "remote-hash", "name": "a.png"}
    handler = answer(json.dumps({"images": {"a.png": entry}}), 200, "text/javascript")
    async with fake_graph(handler) as base, aiohttp.ClientSession(trust_env=False) as s:
        uploaded = await make_client(s, base).upload(ACCOUNT, "a.png", png_bytes(1))
    assert (uploaded.hash, uploaded.name) == ("remote-hash", "a.png")


@pytest.mark.asyncio
async def test_the_upload_entry_is_taken_whatever_its_key() -> None:
    handler = answer(json.dumps({"images": {"bytes": {"hash": "h9"}}}))
    async with fake_graph(handler) as base, aiohttp.ClientSession(trust_env=False) as s:
        uploaded = await make_client(s, base).upload(ACCOUNT, "a.png", png_bytes(1))
    assert (uploaded.hash, uploaded.name) == ("h9", "")


@pytest.mark.asyncio
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("where", ["message", "user_msg"])
async def test_a_token_echoed_by_the_server_is_not_repeated(call: str, where: str) -> None:
    # Meta has answered "Malformed access token <the token>"; a proxy may echo anything.
    text = f"(#190) Malformed access token {TOKEN} (proof {PROOF}, secret {APP_SECRET})"
    err: dict[str, object] = {"message": text if where == "message" else "bad", "code": 190}
    if where == "user_msg":
        err["error_user_msg"] = text
    error = await failure_from(answer(json.dumps({"error": err}), 400), call)
    assert isinstance(error, AuthError)
    assert error.code == 190


@pytest.mark.asyncio
@pytest.mark.parametrize("call", CALLS)
async def test_a_dropped_connection_is_transient(call: str) -> None:
    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    error = await failure_from(hang_up, call)
    assert isinstance(error, TransientError)
    assert error.message.startswith("network error")


@pytest.mark.asyncio
@pytest.mark.parametrize("stall", ["before_headers", "in_body"])
async def test_a_timeout_is_transient(stall: str) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if stall == "before_headers":
            await release.wait()
            return web.json_response({})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"data": [')
        await release.wait()
        return resp

    async with fake_graph(slow) as base, aiohttp.ClientSession(trust_env=False) as s:
        client = make_client(s, base, app_secret=APP_SECRET, timeout=0.2)
        try:
            with pytest.raises(TransientError) as info:
                await client.list_page(ACCOUNT)
        finally:
            release.set()  # let the handler end before the server stops
    assert info.value.message == "network error: timed out"
    assert_clean(info.value, base, f"{base}/{API}")


@pytest.mark.asyncio
async def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(trust_env=False) as s:
        client = make_client(s, base, app_secret=APP_SECRET)
        for call in CALLS:
            with pytest.raises(TransientError) as info:
                await run_call(client, call)
            assert info.value.message.startswith("network error: cannot connect")
            assert_clean(info.value, base, f"{base}/{API}")


@pytest.mark.asyncio
async def test_the_client_does_not_show_the_token(session: aiohttp.ClientSession) -> None:
    client = make_client(session, "http://127.0.0.1:9", app_secret=APP_SECRET)
    for shown in (repr(client), str(client)):
        for secret in (TOKEN, APP_SECRET, PROOF):
            assert secret not in shown
