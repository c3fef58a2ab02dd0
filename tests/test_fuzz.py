"""Fuzzing the three inputs syncd does not control: config files, file names, Graph answers.

- Config: any TOML (and any bytes) gives a `Config` or a one-line `ConfigError`; through the
  CLI that is exit 2 with one line on stderr.
- File names: any bytes Linux allows in a name (invalid UTF-8, newlines, quotes, 255-byte
  names, paths longer than PATH_MAX) go through a real scan and reconcile against the
  emulator: each file is uploaded, or shown by `status` with a reason; never a crash.
- Graph answers: malformed JSON, wrong-typed fields, proxy HTML pages, empty and huge bodies,
  wrong content types, bogus usage headers, stalls, served by a tiny aiohttp app on
  127.0.0.1 to the real client, channel and executor: a clean `GraphError` for that call or
  file, never another exception, a hang, or a DELETE the answers did not justify.

Hypothesis runs derandomized (seeded by the test) with bounded examples and no database, so
every run tries the same inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import ACCOUNT, TOKEN, SyncEnv, run_syncd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import png_bytes, write_image
from loopback_server import LoopbackServer

from syncd.backoff import Backoff
from syncd.channel import AccountChannel
from syncd.config import Config, load_config, parse_config
from syncd.emulator import EmulatorThread
from syncd.errors import ConfigError, GraphError
from syncd.executor import Executor, PassReport, UploadContext
from syncd.graph import GraphClient, Uploaded
from syncd.manifest import SqliteManifest
from syncd.models import FileState, ImageOrigin, ImageRecord, LocalFile, RemoteImage
from syncd.planner import Deletion, Upload
from syncd.ratelimit import TokenBucket
from syncd.secrets import Token

FUZZ = settings(derandomize=True, database=None, deadline=None)

# -- TOML values and documents ---------------------------------------------------------

_scalars = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
toml_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _toml_key(key: str) -> str:
    return str(json.dumps(key))  # a basic string is a valid TOML key, escapes included


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    text: str = value.isoformat()  # datetime, date, time
    return text


SECTION_KEYS = {
    "graph": ["base_url", "api_version", "access_token_file", "app_secret_file", "timeout_seconds"],
    "manifest": ["path"],
    "sync": [
        "workers",
        "settle_seconds",
        "delete_grace_seconds",
        "rescan_interval_seconds",
        "observer",
        "max_delete_fraction",
        "poll_interval_seconds",
        "drain_seconds",
        "max_attempts",
    ],
    "metrics": ["listen"],
    "log": ["level", "format"],
}
ACCOUNT_KEYS = ["id", "folder", "rate_per_second", "burst"]
_plausible = st.one_of(
    toml_values,
    st.sampled_from(
        ["", "auto", "polling", "debug", "http://127.0.0.1:1", "v21.0", "act_12", "0", "[::1]:9"]
    ),
    st.integers(min_value=-5, max_value=300),
    st.floats(min_value=-1, max_value=1e4),
)


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A config near the valid ones: real sections and keys, any values, some unknown keys."""
    doc: dict[str, Any] = {}
    for section, keys in SECTION_KEYS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
            doc[section] = {k: draw(_plausible) for k in chosen}
    accounts = []
    for i in range(draw(st.integers(min_value=0, max_value=3))):
        acct = {"id": draw(st.one_of(st.just(str(1000 + i)), _plausible)), "folder": f"/srv/{i}"}
        for key in draw(st.lists(st.sampled_from(ACCOUNT_KEYS), unique=True, max_size=4)):
            acct[key] = draw(_plausible)
        accounts.append(acct)
    keep_empty = draw(st.booleans())
    if accounts or keep_empty:
        doc["accounts"] = accounts
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        doc[draw(st.text(min_size=1, max_size=8))] = draw(toml_values)
    return doc


def _render(doc: dict[str, Any]) -> str:
    lines = []
    for name, value in doc.items():
        if name == "accounts" and isinstance(value, list) and value:
            for acct in value:
                lines.append("[[accounts]]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in acct.items())
        else:
            lines.append(f"{_toml_key(name)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _check_outcome(load: Callable[[], Config]) -> Config | ConfigError:
    try:
        return load()
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith("config error: "), text
        assert "\n" not in text, text
        assert "\r" not in text, text
        return exc


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(doc=config_docs())
def test_config_values_give_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    _check_outcome(lambda: parse_config(doc, source=Path("/etc/syncd/syncd.toml")))


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=config_docs(), raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_config_files_give_a_config_or_a_config_error(
    tmp_path: Path, doc: dict[str, Any], raw: bytes | None
) -> None:
    path = tmp_path / "syncd.toml"
    path.write_bytes(raw if raw is not None else _render(doc).encode())
    _check_outcome(lambda: load_config(path))


CLI_CASES = {
    "not toml": b"[sync\nworkers = 4\n",
    "not utf-8": b"[sync]\nworkers = \xff\n",
    "wrong type": b'[sync]\nworkers = "four"\n[[accounts]]\nid = "1"\nfolder = "/srv/a"\n',
    "nan": b'[sync]\nsettle_seconds = nan\n[[accounts]]\nid = "1"\nfolder = "/srv/a"\n',
    "huge int": b"[sync]\nworkers = 99999999999999999999999\n",
    "unknown nested": b'[[accounts]]\nid = "1"\nfolder = "/srv/a"\n[accounts.x]\ny = 1\n',
}


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_config_through_the_cli_is_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "syncd.toml"
    path.write_bytes(CLI_CASES[case])
    run = run_syncd(["--config", str(path), "--reconcile"], TOKEN, timeout=30)
    assert run.code == 2, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("syncd: config error: "), run.stderr
    assert "Traceback" not in run.output


# -- file names ---------------------------------------------------------------------------

_name_bytes = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")
)
_name_parts = st.one_of(
    _name_bytes,
    st.sampled_from(
        [
            b"\xff\xfe",
            b"caf\xc3\xa9",
            b"\xed\xa0\x80",
            b"line\nbreak",
            b"tab\there",
            b"\x7f",
            b'quote"s',
            b"back\\slash",
            b" lead",
            b"trail ",
            b"-dash",
            b"\xe2\x80\xae",
            b"%2F",
        ]
    ),
)
_extensions = st.sampled_from([b".jpg", b".PNG", b".gif", b".tif", b".txt", b"", b".jpg.part"])


@st.composite
def file_names(draw: st.DrawFn) -> list[bytes]:
    names: set[bytes] = set()
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        stem = b"".join(draw(st.lists(_name_parts, min_size=1, max_size=3)))
        name = (stem + draw(_extensions))[:255]
        if name not in (b".", b".."):
            names.add(name)
    if draw(st.booleans()):
        names.add(b"L" * 251 + b".png")  # the longest name Linux allows
    return sorted(names)


@contextlib.contextmanager
def _emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        yield emu


def _write_named(folder: Path, name: bytes, seed: int) -> str:
    data = png_bytes(seed) if name.lower().endswith((b".png", b".jpg.part")) else None
    if data is None:
        kind = {b".jpg": "jpeg", b".gif": "gif", b".tif": "tiff"}.get(name[-4:].lower(), "png")
        data = write_image(folder.parent / "scratch.bin", kind, seed).read_bytes()
    fd = os.open(os.path.join(os.fsencode(folder), name), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return hashlib.md5(data).hexdigest()


def _status_by_raw_path(env: SyncEnv) -> dict[bytes, tuple[str, str | None]]:
    rows = env.sql("SELECT path, state, last_error FROM files")
    return {bytes(p): (str(s), e) for p, s, e in rows}


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=file_names())
def test_any_file_name_is_uploaded_or_skipped_with_a_reason(
    tmp_path_factory: pytest.TempPathFactory, names: list[bytes]
) -> None:
    tmp = tmp_path_factory.mktemp("names")
    with _emulator() as emu:
        env = SyncEnv(tmp, emu)
        folder = env.add_account(ACCOUNT)
        md5s = {name: _write_named(folder, name, seed) for seed, name in enumerate(names)}
        result = env.reconcile()
        assert "Traceback" not in result.output, result.output[-3000:]
        assert result.code in (0, 1), result.output[-3000:]
        remote = {str(i["content_md5"]) for i in env.images()}
        rows = _status_by_raw_path(env)
        for name, md5 in md5s.items():
            if md5 in remote:
                assert rows[name][0] == "synced", (name, rows.get(name))
            else:
                assert name in rows, f"{name!r}: neither uploaded nor recorded with a reason"
                state, reason = rows[name]
                assert state in ("skipped", "failed"), (name, state, reason)
                assert reason, (name, state)
        status = env.status()  # and status can show every one of them
        assert len(status["accounts"][0]["items"]) == len(names)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_path_longer_than_path_max_is_reported_with_a_reason(env: SyncEnv) -> None:
    folder = env.folder()
    write_image(folder / "ok.png", "png", 1)
    # 20 levels of 250-byte directory names: about 5,000 bytes, past PATH_MAX (4096).
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(20):
            name = f"{level:02d}" + "d" * 248
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, png_bytes(2))
        os.close(out)
    finally:
        os.close(fd)
    result = env.reconcile()
    assert "Traceback" not in result.output, result.output[-3000:]
    assert result.code in (0, 1), result.output[-3000:]
    assert {i["name"] for i in env.images()} >= {"ok.png"}

    # The deep file cannot even be listed by path: the folder syncd could not go into is
    # named, with its reason, in the log and in status, and the pass is not "all in sync".
    def too_long(path: str) -> bool:
        return path.startswith("00") and path.count("/") >= 14

    logged = [e for e in result.events() if too_long(str(e.get("path", "")))]
    assert logged, result.output[-3000:]
    assert logged[0]["reason"] == "path too long"
    items = env.status()["accounts"][0]["items"]
    assert any(too_long(i["path"]) and i["reason"] == "path too long" for i in items)
    assert result.code == 1


# -- Graph answers --------------------------------------------------------------------------


@dataclass
class Answer:
    """One canned HTTP answer (or a stall, or a body bigger than syncd accepts)."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stall: bool = False
    huge: bool = False
    short: bool = False  # declares more bytes than it sends, then closes


Handler = Callable[[web.Request], Awaitable[Answer]]


class HostileServer(LoopbackServer):
    """A server on 127.0.0.1 in its own thread, answering what `handler` says."""

    def __init__(self) -> None:
        super().__init__()
        self.handler: Handler = self._default
        self.seen: list[tuple[str, str, str]] = []  # (method, path, query)

    async def _default(self, request: web.Request) -> Answer:
        return Answer()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.seen.append((request.method, request.path, request.query_string))
        answer = await self.handler(request)
        if answer.stall:
            await asyncio.sleep(30)
        headers = dict(answer.headers)
        if answer.content_type is not None:
            headers["Content-Type"] = answer.content_type
        if answer.huge or answer.short:
            resp = web.StreamResponse(status=answer.status, headers=headers)
            resp.content_length = 9 * 1024 * 1024 if answer.huge else len(answer.body) + 100
            await resp.prepare(request)
            if answer.short:
                await resp.write(answer.body)
                if request.transport is not None:
                    request.transport.close()
                return resp
            chunk = b" " * 65536
            for _ in range(9 * 16):
                await resp.write(chunk)
            return resp
        return web.Response(status=answer.status, body=answer.body, headers=headers)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@contextlib.asynccontextmanager
async def _client(url: str, timeout: float = 1.5) -> AsyncIterator[GraphClient]:
    async with aiohttp.ClientSession() as session:
        yield GraphClient(
            session, base_url=url, api_version="v21.0", token=Token(TOKEN), timeout=timeout
        )


_json: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_graphish = st.one_of(
    _json,
    st.fixed_dictionaries({"images": st.dictionaries(st.text(max_size=8), _json, max_size=3)}),
    st.fixed_dictionaries(
        {"images": st.fixed_dictionaries({"a.png": st.fixed_dictionaries({"hash": _json})})}
    ),
    st.fixed_dictionaries(
        {
            "data": st.lists(
                st.dictionaries(
                    st.sampled_from(
                        [
                            "hash",
                            "name",
                            "status",
                            "creatives",
                            "is_associated_creatives_in_adgroups",
                            "created_time",
                        ]
                    ),
                    _json,
                ),
                max_size=3,
            ),
            "paging": _json,
        }
    ),
    st.fixed_dictionaries(
        {
            "error": st.dictionaries(
                st.sampled_from(["message", "code", "error_subcode", "is_transient", "type"]), _json
            )
        }
    ),
    st.fixed_dictionaries({"success": _json}),
)
_bodies = st.one_of(
    _graphish.map(lambda v: json.dumps(v).encode()),
    _graphish.map(lambda v: json.dumps(v).encode()[: max(1, len(json.dumps(v)) // 2)]),
    st.just(b"<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"),
    st.just(b""),
    st.binary(max_size=64),
    st.just(b"[" * 5000 + b"]" * 5000),  # nesting deep enough to trip a recursive parser
)
_usage_value = st.one_of(
    st.just("{"),
    st.just("null"),
    st.just("[]"),
    _json.map(json.dumps),
    st.fixed_dictionaries(
        {"acc_id_util_pct": _json, "reset_time_duration": st.one_of(_json, st.just(-5))}
    ).map(json.dumps),
    st.fixed_dictionaries(
        {
            ACCOUNT: st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.just("ads_management"),
                        "call_count": _json,
                        "estimated_time_to_regain_access": st.one_of(_json, st.just(-1)),
                    }
                )
            )
        }
    ).map(json.dumps),
)
_headers = st.dictionaries(
    st.sampled_from(
        ["X-Ad-Account-Usage", "X-Business-Use-Case-Usage", "X-App-Usage", "Retry-After"]
    ),
    _usage_value,
    max_size=3,
)


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    special = draw(st.integers(min_value=0, max_value=40))
    return Answer(
        status=draw(st.sampled_from([200, 200, 200, 400, 401, 403, 404, 429, 500, 502, 503])),
        body=draw(_bodies),
        content_type=draw(
            st.sampled_from(
                ["application/json", "text/html", "text/plain", "application/octet-stream", None]
            )
        ),
        headers=draw(_headers),
        huge=special == 0,
        short=special == 1,
        stall=special == 2,
    )


def _well_typed(kind: str, value: object) -> bool:
    if kind == "upload":
        return isinstance(value, Uploaded) and bool(value.hash)
    if kind == "list":
        if not isinstance(value, tuple) or len(value) != 2:
            return False
        images, cursor = value[0], value[1]
        return all(isinstance(i, RemoteImage) for i in images) and (
            cursor is None or isinstance(cursor, str)
        )
    if kind == "read":
        return isinstance(value, list) and all(isinstance(i, RemoteImage) for i in value)
    return value is None or isinstance(value, dict)


async def _one_call(client: GraphClient, kind: str) -> object:
    if kind == "upload":
        return await client.upload(ACCOUNT, "a.png", png_bytes(1))
    if kind == "list":
        return await client.list_page(ACCOUNT)
    if kind == "read":
        return await client.read_hashes(ACCOUNT, ["h1", "h2"])
    if kind == "delete":
        await client.delete_image(ACCOUNT, "h1")
        return None
    return await client.check_account(ACCOUNT)


@pytest.mark.timeout(240)
@settings(FUZZ, max_examples=120)
@given(answer=answers(), kind=st.sampled_from(["upload", "list", "read", "delete", "check"]))
def test_any_graph_answer_is_a_result_or_a_graph_error(
    hostile: HostileServer, answer: Answer, kind: str
) -> None:
    async def handler(request: web.Request) -> Answer:
        return answer

    hostile.handler = handler

    async def call() -> object:
        async with _client(hostile.url, timeout=1.0) as client:
            return await asyncio.wait_for(_one_call(client, kind), 5.0)

    value: object
    try:
        value = asyncio.run(call())
    except GraphError as exc:
        value = exc
    if isinstance(value, GraphError):
        assert value.reason, value
        assert "\n" not in value.reason, value.reason
        assert TOKEN not in value.reason
    else:
        assert _well_typed(kind, value), (kind, value)


# -- the channel and executor path, answer by answer ---------------------------------------

H_GONE = "f" * 32  # the hash of the image due for deletion
DELETE_ANSWERS: dict[str, tuple[Answer, bool]] = {
    # name: (the creatives check's answer, whether a DELETE is then justified)
    "not in use": (
        Answer(body=json.dumps({"data": [{"hash": H_GONE, "creatives": []}]}).encode()),
        True,
    ),
    "in use": (
        Answer(body=json.dumps({"data": [{"hash": H_GONE, "creatives": ["1"]}]}).encode()),
        False,
    ),
    "html page": (Answer(status=200, body=b"<html>502</html>", content_type="text/html"), False),
    "proxy 502": (
        Answer(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html"),
        False,
    ),
    "empty body": (Answer(body=b""), False),
    "data not a list": (Answer(body=b'{"data": "nope"}'), False),
    "truncated json": (Answer(body=b'{"data": [{"hash": "' + H_GONE.encode()), False),
    "error body": (Answer(status=400, body=b'{"error": {"code": 100, "message": "x"}}'), False),
    "stall": (Answer(stall=True), False),
    "huge": (Answer(huge=True), False),
    "short": (Answer(short=True, body=b'{"data": ['), False),
}
WRONG_TYPED = {
    "creatives as a string": {"hash": H_GONE, "creatives": "120210000000"},
    "creatives as an edge object": {"hash": H_GONE, "creatives": {"data": [{"id": "1"}]}},
    "creatives as a number": {"hash": H_GONE, "creatives": 120210000000},
    # 1 == True in Python: an integer flag was once read as "not in ad groups".
    "in ad groups as 1": {"hash": H_GONE, "is_associated_creatives_in_adgroups": 1},
    "in ad groups as a string": {"hash": H_GONE, "is_associated_creatives_in_adgroups": "true"},
}


def _executor(tmp: Path, url: str) -> tuple[Executor, SqliteManifest, aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    client = GraphClient(
        session, base_url=url, api_version="v21.0", token=Token(TOKEN), timeout=1.0
    )
    channel = AccountChannel(
        ACCOUNT,
        client,
        TokenBucket(1000.0, 100.0),
        Backoff(base=0.0, max_attempts=2),
    )
    manifest = SqliteManifest.open(tmp / "manifest.sqlite3")
    return Executor(manifest, channel, workers=2), manifest, session


async def _delete_through(tmp: Path, hostile: HostileServer, check: Answer) -> list[str]:
    async def handler(request: web.Request) -> Answer:
        if request.method == "DELETE":
            return Answer(body=b'{"success": true}')
        return check

    hostile.handler = handler
    hostile.seen.clear()
    executor, manifest, session = _executor(tmp, hostile.url)
    try:
        gone = time.time() - 3600
        manifest.finish_upload(
            ImageRecord(ACCOUNT, H_GONE, "0" * 32, ImageOrigin.UPLOADED, gone, gone, "x.png"), []
        )
        report = PassReport(ACCOUNT)
        await asyncio.wait_for(
            executor.delete_due([Deletion(H_GONE, ("0" * 32,), "x.png", gone)], report), 20
        )
    finally:
        await session.close()
        manifest.close()
    return [m for m, _, _ in hostile.seen if m == "DELETE"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(DELETE_ANSWERS))
def test_creatives_check_answers_never_justify_a_wrong_delete(
    tmp_path: Path, hostile: HostileServer, case: str
) -> None:
    answer, justified = DELETE_ANSWERS[case]
    deletes = asyncio.run(_delete_through(tmp_path, hostile, answer))
    assert deletes == (["DELETE"] if justified else []), case


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(WRONG_TYPED))
def test_wrong_typed_creatives_never_lead_to_a_delete(
    tmp_path: Path, hostile: HostileServer, case: str
) -> None:
    answer = Answer(body=json.dumps({"data": [WRONG_TYPED[case]]}).encode())
    deletes = asyncio.run(_delete_through(tmp_path, hostile, answer))
    assert deletes == [], f"{case}: deleted an image on a garbled creatives answer"


UPLOAD_ANSWERS: dict[str, Answer] = {
    "html 200": Answer(body=b"<html>ok</html>", content_type="text/html"),
    "html 502": Answer(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html"),
    "empty": Answer(body=b""),
    "no images": Answer(body=b'{"id": "1"}'),
    "two images": Answer(body=b'{"images": {"a": {"hash": "h1"}, "b": {"hash": "h2"}}}'),
    "hash not a string": Answer(body=b'{"images": {"a.png": {"hash": 5}}}'),
    "entry not an object": Answer(body=b'{"images": {"a.png": "h1"}}'),
    "huge": Answer(huge=True),
    "stall": Answer(stall=True),
    "short": Answer(short=True, body=b'{"images": {'),
    "bogus usage": Answer(
        status=500,
        body=b"{}",
        headers={"X-Ad-Account-Usage": '{"acc_id_util_pct": "lots"}', "Retry-After": "soon"},
    ),
}


def _upload_through(
    tmp: Path, hostile: HostileServer, answer: Answer
) -> tuple[PassReport, FileState | None]:
    """One file's upload through the real executor and channel, the server answering `answer`."""

    async def handler(request: web.Request) -> Answer:
        return answer

    async def run() -> tuple[PassReport, FileState | None]:
        hostile.handler = handler
        executor, manifest, session = _executor(tmp, hostile.url)
        data = png_bytes(3)
        (tmp / "a.png").write_bytes(data)
        md5 = hashlib.md5(data).hexdigest()
        st_ = (tmp / "a.png").stat()
        local = LocalFile("a.png", st_.st_size, st_.st_mtime_ns, md5)
        report = PassReport(ACCOUNT)
        try:
            ctx = UploadContext(root=tmp, preexisting=set(), intent_md5s=set())
            await asyncio.wait_for(
                executor.upload_one(Upload(md5, (local,), "a.png"), ctx, report), 20
            )
            row = manifest.file(ACCOUNT, "a.png")
        finally:
            await session.close()
            manifest.close()
        return report, None if row is None else row.state

    return asyncio.run(run())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(UPLOAD_ANSWERS))
def test_broken_upload_answers_leave_the_file_pending(
    tmp_path: Path, hostile: HostileServer, case: str
) -> None:
    # None of these is Meta refusing the image: the next pass must try again.
    report, state = _upload_through(tmp_path, hostile, UPLOAD_ANSWERS[case])
    assert report.uploaded == 0, case
    assert report.failed, case
    assert state is FileState.PENDING, (case, state)


NOT_AN_OBJECT = {"json list": b"[1, 2]", "json number": b"123", "json string": b'"ok"'}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(NOT_AN_OBJECT))
def test_a_2xx_answer_that_is_not_a_json_object_leaves_the_file_pending(
    tmp_path: Path, hostile: HostileServer, case: str
) -> None:
    report, state = _upload_through(tmp_path, hostile, Answer(body=NOT_AN_OBJECT[case]))
    assert report.uploaded == 0, case
    assert state is FileState.PENDING, (case, state)


@pytest.mark.timeout(60)
def test_a_listing_cursor_loop_fails_fast(hostile: HostileServer) -> None:
    page = {
        "data": [{"hash": "h1", "name": "a.png"}],
        "paging": {"cursors": {"after": "SAME"}, "next": "http://127.0.0.1/next"},
    }

    async def handler(request: web.Request) -> Answer:
        return Answer(body=json.dumps(page).encode())

    hostile.handler = handler
    hostile.seen.clear()

    async def run() -> None:
        async with _client(hostile.url) as client:
            channel = AccountChannel(
                ACCOUNT, client, TokenBucket(10_000.0, 1000.0), Backoff(base=0.0)
            )
            await channel.list_all()

    started = time.monotonic()
    with pytest.raises(GraphError):
        asyncio.run(asyncio.wait_for(run(), 3.0))
    assert time.monotonic() - started < 3.0
    assert len(hostile.seen) <= 3, f"{len(hostile.seen)} pages fetched for one looping cursor"
