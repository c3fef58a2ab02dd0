"""Token hygiene: the access token (and the app secret, and their appsecret_proof) appear
nowhere, whichever way things fail.

Every failure path we can drive is driven, for `--reconcile` and for the daemon, with debug
logging on: auth errors 190 (invalid, expired) and 200 (permission) from the emulator,
dropped connections and 5xx, a connection refused, a server that echoes the token back in
its error message (Meta has done so for malformed tokens), a manifest that turns unwritable
under a running daemon and a full disk under `--reconcile` (both give exceptions with
tracebacks), and the metrics endpoint. Then stdout, stderr, `status`, `status --json`, the
metrics text, the manifest and its WAL are searched for the secrets, whole or in part.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ACCOUNT, ACCOUNT_B, TOKEN, Run, SyncEnv, run_syncd, set_faults, set_tokens
from daemon_proc import DaemonProc
from images import png_bytes, write_image
from loopback_server import LoopbackServer

from syncd.emulator import EmulatorThread
from syncd.secrets import Token, appsecret_proof

pytestmark = [pytest.mark.e2e]

APP_SECRET = "appsecret-Qw3rTy-do-not-leak-either"
PROOF = appsecret_proof(Token(TOKEN), Token(APP_SECRET))
# Whole secrets, their URL-encoded forms, and distinctive pieces (a truncated or split
# secret would escape a whole-string redaction).
NEEDLES = [
    TOKEN,
    APP_SECRET,
    PROOF,
    TOKEN[5:21],
    TOKEN[-16:],
    APP_SECRET[10:26],
    PROOF[:16],
    PROOF[-16:],
]


def _leaks(text: str | bytes) -> list[str]:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [n for n in NEEDLES if n.encode() in raw]


def _assert_clean(where: str, text: str | bytes) -> None:
    found = _leaks(text)
    assert not found, f"{where} holds a secret: {found}"


def _assert_state_clean(env: SyncEnv) -> None:
    for path in env.manifest.parent.glob("*"):  # the manifest, its WAL and shared memory
        _assert_clean(str(path), path.read_bytes())
    assert not any(r["token_in_url"] for r in env.requests()), "the token went into a URL"


def _config(env: SyncEnv, base_url: str | None = None, extra: str = "") -> Path:
    env.write_config()
    text = env.config_path.read_text()
    if base_url is not None:
        text = text.replace(f'base_url = "{env.emu.base_url}"', f'base_url = "{base_url}"')
    env.config_path.write_text(text + '[log]\nlevel = "debug"\n' + extra)
    return env.config_path


def _run(env: SyncEnv, *args: str, base_url: str | None = None) -> Run:
    config = _config(env, base_url)
    return run_syncd(
        ["--config", str(config), *args], TOKEN, timeout=90, env={"SYNCD_APP_SECRET": APP_SECRET}
    )


def _require_proof(emu: EmulatorThread) -> None:
    def apply() -> None:
        emu.state.config.app_secret = APP_SECRET

    emu.call(apply)


def _emulator_config(emu: EmulatorThread, **changes: object) -> None:
    def apply() -> None:
        for key, value in changes.items():
            setattr(emu.state.config, key, value)

    emu.call(apply)


class EchoServer(LoopbackServer):
    """A Graph look-alike that answers reads and refuses uploads quoting the caller's
    Authorization header and query back, the way a careless API or proxy might."""

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        quoted = f"{request.headers.get('Authorization', '')} {request.query_string}"
        if request.method == "GET" and request.path.endswith("/adimages"):
            return web.json_response({"data": []})
        if request.method == "GET":
            return web.json_response({"id": f"act_{ACCOUNT}", "account_id": ACCOUNT})
        status = 400 if "permanent" in request.path or request.method == "POST" else 500
        return web.json_response(
            {
                "error": {
                    "message": f"(#100) Malformed access token {quoted}",
                    "type": "OAuthException",
                    "code": 100,
                    "error_subcode": 1487197,
                    "error_user_msg": f"Token {quoted} rejected",
                }
            },
            status=status,
            headers={"WWW-Authenticate": quoted},
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_reconcile_failure_paths_never_show_the_secrets(env: SyncEnv) -> None:
    _require_proof(env.emu)
    env.sync.update(max_attempts=2)  # every failure path, without waiting out long backoffs
    folder_b = env.add_account(ACCOUNT_B)
    for i in range(4):
        write_image(env.folder() / f"a{i}.png", "png", i)
        write_image(folder_b / f"b{i}.png", "png", 100 + i)
    (env.folder() / "broken.png").write_bytes(png_bytes(1)[:30])  # refused: code 100
    runs: dict[str, Run] = {}
    set_faults(env.emu, seed=3, error_rate=0.3, drop_rate=0.3)
    runs["chaos"] = _run(env, "--reconcile")
    set_faults(env.emu, error_rate=0.0, drop_rate=0.0)
    runs["dry run"] = _run(env, "--reconcile", "--dry-run")
    runs["status"] = _run(env, "status")
    runs["status json"] = _run(env, "status", "--json")
    _emulator_config(env.emu, denied_accounts=frozenset({ACCOUNT_B}))  # (#200)
    runs["permission 200"] = _run(env, "--reconcile")
    _emulator_config(env.emu, denied_accounts=frozenset(), expired_tokens=frozenset({TOKEN}))
    runs["expired 190"] = _run(env, "--reconcile")
    _emulator_config(env.emu, expired_tokens=frozenset())
    set_tokens(env.emu, {"some-other-token"})
    runs["invalid 190"] = _run(env, "--reconcile")
    runs["refused"] = _run(env, "--reconcile", base_url=f"http://127.0.0.1:{_free_port()}")
    with EchoServer() as echo:
        write_image(env.folder() / "echoed.png", "png", 77)
        runs["echoed token"] = _run(env, "--reconcile", base_url=echo.url)
        runs["status after echo"] = _run(env, "status")
        runs["status json after echo"] = _run(env, "status", "--json")
    assert runs["permission 200"].code == 3, runs["permission 200"].output
    assert runs["expired 190"].code == 3, runs["expired 190"].output
    assert runs["invalid 190"].code == 3, runs["invalid 190"].output
    assert runs["echoed token"].code == 1, runs["echoed token"].output
    echoed = [
        line for line in runs["status after echo"].stdout.splitlines() if "echoed.png" in line
    ]
    assert echoed, runs["status after echo"].stdout  # the refusal is recorded...
    print(f"status line for the echoed refusal: {echoed[0].strip()}")
    assert any(e.get("level") == "debug" for e in runs["chaos"].events())  # debug was on
    for name, run in runs.items():
        _assert_clean(f"{name}: stdout", run.stdout)
        _assert_clean(f"{name}: stderr", run.stderr)
    _assert_state_clean(env)  # ...but not the token the server quoted in it


@contextlib.contextmanager
def _tmpfs(path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(60)
def test_exception_tracebacks_never_show_the_secrets(env: SyncEnv) -> None:
    """A manifest that fills up mid-pass: whatever is printed (a traceback, today) is clean."""
    _require_proof(env.emu)
    env.accounts[0].update(rate_per_second=1000.0, burst=100)
    with _tmpfs(env.manifest.parent):
        write_image(env.folder() / "first.png", "png", 1)
        assert _run(env, "--reconcile").code == 0
        filler = env.manifest.parent / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size):
                        pass
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 96 * 1024)
        for i in range(150):
            write_image(env.folder() / f"{'n' * 80}{i}.png", "png", 10 + i)
        run = _run(env, "--reconcile")
        assert run.code != 0, run.output
        assert "full" in run.stderr
        _assert_clean("stdout", run.stdout)
        _assert_clean("stderr", run.stderr)
        filler.unlink()
        _assert_state_clean(env)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
        return body


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_daemon_failure_paths_never_show_the_secrets(env: SyncEnv) -> None:
    _require_proof(env.emu)
    env.sync.update(
        settle_seconds=0.1, observer="native", rescan_interval_seconds=3600.0, max_attempts=2
    )
    for i in range(6):
        write_image(env.folder() / f"d{i}.png", "png", i)
    (env.folder() / "broken.png").write_bytes(png_bytes(2)[:30])
    port = _free_port()
    config = _config(env, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    set_faults(env.emu, seed=9, error_rate=0.3, drop_rate=0.3)
    daemon = DaemonProc(config, TOKEN, {"SYNCD_APP_SECRET": APP_SECRET})
    scrapes: list[str] = []
    try:
        daemon.wait_event("daemon_ready")
        daemon.wait_event("scan_complete", timeout=60)  # the start-up pass, through the faults
        assert daemon.count("graph_retry") > 0
        set_faults(env.emu, error_rate=0.0, drop_rate=0.0)
        scrapes.append(_scrape(port))
        # A manifest that cannot be written: the worker logs the exception with its traceback.
        guarded = [env.manifest.parent, env.manifest, *env.manifest.parent.glob("*-*")]
        made = [p for p in guarded if _chattr("+i", p)]
        try:
            if made:
                write_image(env.folder() / "while-readonly.png", "png", 40)
                failed = daemon.wait_event("file_processing_error", timeout=20)
                assert failed.get("exception"), failed  # a traceback was rendered
        finally:
            for path in made:
                _chattr("-i", path)
        # The token is revoked: every call now answers 190; the only account stops.
        set_tokens(env.emu, {"a-new-token"})
        write_image(env.folder() / "after-revocation.png", "png", 41)
        daemon.wait_event("account_stopped", timeout=30)
        with contextlib.suppress(OSError):  # the daemon may already be on its way out
            scrapes.append(_scrape(port))
        code = daemon.proc.wait(timeout=30)
        assert code == 3, daemon.output[-3000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        else:
            daemon.stop()
    assert any(e.get("level") == "debug" for e in daemon.events)
    _assert_clean("daemon output", daemon.output)
    for i, text in enumerate(scrapes):
        assert "syncd_" in text
        _assert_clean(f"metrics scrape {i}", text)
    status = run_syncd(["--config", str(config), "status", "--json"], TOKEN)
    _assert_clean("status --json", status.output)
    _assert_state_clean(env)


def _chattr(flag: str, path: Path) -> bool:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0
