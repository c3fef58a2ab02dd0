"""Metrics: the text format, callback gauges, bounded reason labels, a real loopback endpoint."""

from __future__ import annotations

import math
import socket

import aiohttp
import pytest

from syncd.errors import PermanentError, TransientError
from syncd.metrics import (
    CONTENT_TYPE,
    REASON_CLASSES,
    Metrics,
    is_loopback,
    parse_listen,
    reason_label,
    standard_metrics,
    start_metrics_server,
)

SECRET = "EAAB-metrics-secret-Zx9Q7"


def sample_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_render_counter_help_type_and_suffix() -> None:
    metrics = Metrics()
    metrics.describe("uploads", "Images uploaded.", "counter")
    metrics.inc("uploads", account="1")
    metrics.inc("uploads", 2, account="1")
    metrics.inc("uploads", account="2")
    assert metrics.render() == (
        "# HELP syncd_uploads_total Images uploaded.\n"
        "# TYPE syncd_uploads_total counter\n"
        'syncd_uploads_total{account="1"} 3\n'
        'syncd_uploads_total{account="2"} 1\n'
    )
    assert metrics.value("uploads", account="1") == 3.0
    assert metrics.value("uploads", account="9") == 0.0


def test_render_is_deterministic_and_sorted() -> None:
    one, two = Metrics(), Metrics()
    for metrics, order in ((one, ["b", "a"]), (two, ["a", "b"])):
        for name in order:
            metrics.describe(name, name, "counter")
            for account in reversed(order):
                metrics.inc(name, reason="x", account=account)
    assert one.render() == two.render()
    names = [line.split("{")[0] for line in sample_lines(one.render())]
    assert names == sorted(names)
    assert 'syncd_a_total{account="a",reason="x"} 1' in one.render()


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.describe("skips", 'Help with \\ and\nnewline and "quotes".', "counter")
    metrics.inc("skips", account='a\\b"c\nd')
    text = metrics.render()
    assert '# HELP syncd_skips_total Help with \\\\ and\\nnewline and "quotes".\n' in text
    assert 'syncd_skips_total{account="a\\\\b\\"c\\nd"} 1\n' in text
    assert len(text.splitlines()) == 3  # nothing broke a line


def test_values_format() -> None:
    metrics = Metrics()
    values = {"a": 0.5, "b": math.inf, "c": -math.inf, "d": math.nan, "e": 1e20, "f": 7.0}
    metrics.gauge("g", "g", lambda: [({"k": k}, v) for k, v in values.items()])
    lines = sample_lines(metrics.render())
    assert lines == [
        'syncd_g{k="a"} 0.5',
        'syncd_g{k="b"} +Inf',
        'syncd_g{k="c"} -Inf',
        'syncd_g{k="d"} NaN',
        'syncd_g{k="e"} 1e+20',
        'syncd_g{k="f"} 7',
    ]


def test_gauges_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    depth = {"now": 1.0}
    calls: list[int] = []

    def read() -> list[tuple[dict[str, str], float]]:
        calls.append(1)
        return [({}, depth["now"])]

    metrics.gauge("queue_depth", "Files waiting.", read)
    assert calls == []  # registering does not read
    assert "syncd_queue_depth 1\n" in metrics.render()
    depth["now"] = 42.0
    assert "# TYPE syncd_queue_depth gauge\nsyncd_queue_depth 42\n" in metrics.render()
    assert metrics.value("queue_depth") == 42.0
    assert len(calls) == 3


def test_a_failing_reader_does_not_break_the_scrape() -> None:
    metrics = standard_metrics()
    metrics.inc("uploads", account="1")

    def broken() -> list[tuple[dict[str, str], float]]:
        raise RuntimeError(SECRET)

    metrics.gauge("queue_depth", "Files waiting.", broken)
    text = metrics.render()
    assert 'syncd_uploads_total{account="1"} 1' in text
    assert "# TYPE syncd_queue_depth gauge" in text
    assert SECRET not in text


def test_standard_metrics_names_and_kinds() -> None:
    metrics = standard_metrics()
    metrics.gauge("tokens_available", "Tokens.", lambda: [({"account": "1"}, 4.5)])
    metrics.gauge("throttled_seconds", "Paused.", lambda: [({"account": "1"}, 12.0)])
    text = metrics.render()
    for counter in ("uploads", "upload_bytes", "deletions", "failures", "skips", "throttles"):
        assert f"# TYPE syncd_{counter}_total counter" in text
    for gauge in ("queue_depth", "oldest_pending_age_seconds", "tokens_available"):
        assert f"# TYPE syncd_{gauge} gauge" in text
    assert "# TYPE syncd_last_complete_scan_timestamp_seconds gauge" in text
    # A running total kept elsewhere stays a counter even though a callback reads it.
    assert "# TYPE syncd_throttled_seconds_total counter" in text
    assert 'syncd_throttled_seconds_total{account="1"} 12' in text
    assert 'syncd_tokens_available{account="1"} 4.5' in text


def test_counter_misuse_is_refused() -> None:
    metrics = standard_metrics()
    with pytest.raises(ValueError, match="cannot change"):
        metrics.inc("uploads", -1, account="1")
    with pytest.raises(ValueError, match="cannot change"):
        metrics.inc("uploads", math.nan, account="1")
    with pytest.raises(ValueError, match="not a pushed counter"):
        metrics.inc("queue_depth")
    with pytest.raises(ValueError, match="invalid label"):
        metrics.inc("uploads", 1.0, **{"__name__": "x"})
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.describe("bad-name", "x", "counter")
    with pytest.raises(KeyError):
        metrics.value("never_declared")


def test_undeclared_counter_is_created() -> None:
    metrics = Metrics()
    metrics.inc("surprises")
    assert "# TYPE syncd_surprises_total counter\nsyncd_surprises_total 1\n" in metrics.render()


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        (PermanentError("Invalid image", code=100, subcode=1487197).reason, "code_1487197"),
        (PermanentError("Invalid parameter", code=100).reason, "code_100"),
        (TransientError("Service unavailable", status=500).reason, "http_500"),
        (TransientError("network error: ClientConnectorError").reason, "network"),
        (TransientError("network error: TimeoutError").reason, "timeout"),
        ("something (code 2", "code_2"),
        ("too large (40000000 bytes > 30 MiB)", "too_large"),
        ("hidden file", "hidden"),
        ("temporary file", "temporary"),
        ("editor lock file", "temporary"),
        ("symlink leads outside the folder", "symlink_outside"),
        ("dangling symlink", "symlink"),
        ("content is not a JPEG image", "not_an_image"),
        ("not an image extension (.txt)", "not_an_image"),
        ("not a regular file (fifo): '/srv/a.jpg'", "not_a_file"),
        ("permission denied", "permission"),
        ("network", "network"),
        ("", "other"),
        ("the moon is in the wrong phase", "other"),
        ("(code 123456789012345)", "other"),  # absurd numbers mint no labels
    ],
)
def test_reason_label(reason: str, label: str) -> None:
    assert reason_label(reason) == label


def test_reason_label_never_returns_free_text() -> None:
    texts = [f"token {SECRET} rejected", SECRET, f'{SECRET} "quoted"\n', "Ünïcode ✓"]
    for text in texts:
        label = reason_label(text)
        assert label in REASON_CLASSES
        assert SECRET not in label
    metrics = standard_metrics()
    metrics.inc("failures", account="1", reason=reason_label(f"bad token {SECRET} (http 400)"))
    text = metrics.render()
    assert SECRET not in text
    assert 'syncd_failures_total{account="1",reason="http_400"} 1' in text


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "::1:9464", "host:", "h:99999", "h:x"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="metrics listen"):
        parse_listen(listen)


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))


@pytest.mark.asyncio
@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:9464", "fileserver.lan:9464"])
async def test_public_listen_is_refused_unless_allowed(listen: str) -> None:
    with pytest.raises(ValueError, match="allow_public"):
        await start_metrics_server(Metrics(), listen)


@pytest.mark.asyncio
async def test_server_serves_metrics_on_loopback() -> None:
    metrics = standard_metrics()
    depth = {"now": 3.0}
    metrics.gauge("queue_depth", "Files waiting.", lambda: [({}, depth["now"])])
    metrics.inc("failures", account="1", reason=reason_label(f"{SECRET} (code 190)"))
    runner = await start_metrics_server(metrics, "127.0.0.1:0")
    try:
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == CONTENT_TYPE
                first = await resp.text()
            depth["now"] = 5.0
            async with session.get(f"{base}/metrics") as resp:
                second = await resp.text()
            async with session.get(f"{base}/") as resp:
                assert resp.status == 200
                assert "/metrics" in await resp.text()
            async with session.get(f"{base}/nothing") as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()
    assert "syncd_queue_depth 3\n" in first
    assert "syncd_queue_depth 5\n" in second
    assert 'syncd_failures_total{account="1",reason="code_190"} 1' in second
    assert SECRET not in first + second


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
async def test_server_on_ipv6_loopback() -> None:
    metrics = standard_metrics()
    metrics.inc("uploads", account="1")
    runner = await start_metrics_server(metrics, "[::1]:0")
    try:
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://[::1]:{port}/metrics") as resp,
        ):
            assert 'syncd_uploads_total{account="1"} 1' in await resp.text()
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_port_in_use_raises_and_cleans_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await start_metrics_server(Metrics(), f"127.0.0.1:{port}")
