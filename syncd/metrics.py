"""Prometheus metrics: a small registry, the text exposition format 0.0.4, an aiohttp endpoint.

Counters are pushed (`inc`); gauges are callbacks read at scrape time, so the daemon never has
to remember to update them. Every family is named `syncd_<name>`, and counters end in
`_total`. Label values come from code, never from free text: failure and skip reasons go
through `reason_label`, which keeps the label set small and a secret quoted in an error
message out of the scrape.

The daemon's names (see `standard_metrics`):

| family | kind | labels |
|---|---|---|
| syncd_uploads_total, syncd_upload_bytes_total, syncd_deletions_total | counter | account |
| syncd_failures_total, syncd_skips_total | counter | account, reason |
| syncd_throttles_total | counter | account |
| syncd_throttled_seconds_total | counter, read by callback | account |
| syncd_queue_depth, syncd_oldest_pending_age_seconds | gauge | |
| syncd_tokens_available, syncd_last_complete_scan_timestamp_seconds | gauge | account |

`throttled_seconds` is a running total kept by the rate limiter, so it is exposed as a
counter (`rate()` then gives the fraction of time an account spends throttled) although the
daemon registers it with `gauge()`, like every other value read at scrape time.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge"]
Reader = Callable[[], Iterable[tuple[dict[str, str], float]]]
LabelSet = tuple[tuple[str, str], ...]

PREFIX = "syncd_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.ASCII)
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*", re.ASCII)


@dataclass(slots=True)
class _Family:
    """One metric family: its help, its kind, and either stored samples or a reader."""

    help: str
    kind: Kind
    samples: dict[LabelSet, float] = field(default_factory=dict)
    read: Reader | None = None


class Metrics:
    """A registry of counters and callback gauges, rendered in Prometheus text format.

    Not locked: use it from the event loop's thread (worker threads hand results back to
    the loop anyway), where an increment cannot interleave with another or with a scrape.
    """

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def describe(self, name: str, help: str, kind: Kind) -> None:
        """Declare a family (its HELP and TYPE); samples already counted are kept."""
        _check_name(name)
        family = self._families.get(name)
        if family is None:
            self._families[name] = _Family(help, kind)
        else:
            family.help, family.kind = help, kind

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add `value` (>= 0) to a counter; an undeclared name becomes a counter."""
        if not value >= 0:  # also refuses NaN: a counter only ever goes up
            raise ValueError(f"counter {name} cannot change by {value!r}")
        family = self._families.get(name)
        if family is None:
            self.describe(name, f"syncd {name.replace('_', ' ')}", "counter")
            family = self._families[name]
        if family.kind != "counter" or family.read is not None:
            raise ValueError(f"{name} is not a pushed counter")
        key = _label_set(labels)
        family.samples[key] = family.samples.get(key, 0.0) + value

    def gauge(self, name: str, help: str, read: Reader) -> None:
        """Register `read`, called at every scrape for (labels, value) pairs.

        The kind stays whatever `describe` said (a running total may be a counter);
        otherwise it is a gauge. `read` runs on the event loop, so it must be quick.
        """
        _check_name(name)
        family = self._families.get(name)
        kind: Kind = family.kind if family is not None else "gauge"
        self._families[name] = _Family(help, kind, read=read)

    def render(self) -> str:
        """The whole registry in text format 0.0.4, families and samples in a stable order."""
        lines: list[str] = []
        for name in sorted(self._families, key=self._full_name):
            family = self._families[name]
            full = self._full_name(name)
            lines.append(f"# HELP {full} {_escape_help(family.help)}")
            lines.append(f"# TYPE {full} {family.kind}")
            for labels, value in sorted(self._samples(name, family).items()):
                lines.append(f"{full}{_format_labels(labels)} {_format_value(value)}")
        return "\n".join(lines) + "\n" if lines else ""

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0.0 if never counted); for tests and status."""
        family = self._families[name]
        return self._samples(name, family).get(_label_set(labels), 0.0)

    def _full_name(self, name: str) -> str:
        full = PREFIX + name
        if self._families[name].kind == "counter" and not full.endswith("_total"):
            full += "_total"
        return full

    def _samples(self, name: str, family: _Family) -> dict[LabelSet, float]:
        if family.read is None:
            return family.samples
        try:
            return {_label_set(labels): float(value) for labels, value in family.read()}
        except Exception as exc:
            # One broken reader must not take every other metric down with it.
            log.warning("metrics_reader_failed: %s: %s", name, type(exc).__name__)
            return {}


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")


def _label_set(labels: dict[str, str]) -> LabelSet:
    """Labels as a sorted tuple: a dict key, and the order they are rendered in."""
    for label in labels:
        if not _LABEL.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"invalid label name {label!r}")
    return tuple(sorted((label, str(value)) for label, value in labels.items()))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(labels: LabelSet) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels) + "}"


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # Whole numbers print without ".0" (as Go's client does), while they are exact.
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def standard_metrics() -> Metrics:
    """A registry with the daemon's families declared (gauges get their readers later)."""
    metrics = Metrics()
    for name, help, kind in _STANDARD:
        metrics.describe(name, help, kind)
    return metrics


_STANDARD: tuple[tuple[str, str, Kind], ...] = (
    ("uploads", "Images uploaded, per account.", "counter"),
    ("upload_bytes", "Bytes of image files uploaded, per account.", "counter"),
    ("deletions", "Remote images deleted, per account.", "counter"),
    ("failures", "Uploads and deletions that failed, per account and reason class.", "counter"),
    ("skips", "Files not uploaded, per account and reason class.", "counter"),
    ("throttles", "Throttling answers and usage slow-downs, per account.", "counter"),
    ("throttled_seconds", "Seconds an account has spent paused by throttling.", "counter"),
    ("queue_depth", "Files waiting to be planned or uploaded.", "gauge"),
    ("oldest_pending_age_seconds", "Age of the longest-waiting pending file.", "gauge"),
    ("tokens_available", "Tokens in the account's rate-limit bucket.", "gauge"),
    (
        "last_complete_scan_timestamp_seconds",
        "Unix time the account's last complete folder scan finished.",
        "gauge",
    ),
)

# -- reason classes -------------------------------------------------------------------------

# GraphError.reason ends in "(code N)", "(code N/M)" or "(http S)"; numbers are capped in
# length so that even a hostile answer cannot mint an unbounded set of labels.
_GRAPH_CODE = re.compile(r"\(code ([0-9]{1,10})(?:/([0-9]{1,10}))?(?![0-9])", re.ASCII)
_HTTP_STATUS = re.compile(r"\(http ([1-5][0-9]{2})\)", re.ASCII)

# First match wins; the phrases are those of syncd's own skip and error reasons.
_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timeout", "timed out")),
    ("throttled", ("throttl", "rate limit")),
    ("network", ("network", "connect")),
    ("not_a_file", ("not a regular file", "special file")),
    ("too_large", ("too large", "too big", "oversize")),
    ("empty", ("empty file",)),
    ("hidden", ("hidden",)),
    ("temporary", ("temporary", "editor lock", "partial")),
    ("system", ("system file", "system directory")),
    ("symlink_outside", ("outside",)),
    ("symlink", ("symlink",)),
    ("not_an_image", ("not an image", "no extension", "is not a", "does not match extension")),
    ("permission", ("permission", "access denied")),
    ("vanished", ("vanished", "no such file")),
    ("unreadable", ("cannot read",)),
)
# Every label reason_label can return besides code_<N> and http_<S>.
REASON_CLASSES = frozenset({"other", *(label for label, _ in _KEYWORDS)})


def reason_label(reason: str) -> str:
    """A short, stable class for a free-text reason, safe as a label value.

    The Graph subcode (more specific) or code when the text carries one, else the HTTP
    status, else a class named by a key phrase, else "other". Never any of the text itself.
    """
    code = _GRAPH_CODE.search(reason)
    if code is not None:
        return f"code_{int(code.group(2) or code.group(1))}"
    status = _HTTP_STATUS.search(reason)
    if status is not None:
        return f"http_{status.group(1)}"
    text = reason.strip().lower()
    if text in REASON_CLASSES:
        return text
    for label, phrases in _KEYWORDS:
        if any(phrase in text for phrase in phrases):
            return label
    return "other"


# -- the endpoint ---------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6addr]:port"; port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"metrics listen {listen!r}: an IPv6 address needs [brackets]")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'metrics listen {listen!r}: expected "host:port"')
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for a loopback address or "localhost"; any other name could resolve anywhere."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_metrics_server(
    metrics: Metrics, listen: str, *, allow_public: bool = False
) -> web.AppRunner:
    """Serve GET /metrics on `listen`; the caller awaits `runner.cleanup()` on shutdown.

    Only loopback unless `allow_public`: syncd runs on file servers, and publishing account
    ids and activity to the network should be a deliberate choice, not a typo.
    `runner.addresses` tells the bound address (useful with port 0).
    """
    host, port = parse_listen(listen)
    if not allow_public and not is_loopback(host):
        raise ValueError(
            f"metrics listen {listen!r} is not a loopback address; "
            "pass allow_public=True to expose metrics beyond this machine"
        )
    app = web.Application()
    app.router.add_get("/metrics", _metrics_handler(metrics))
    app.router.add_get("/", _index)
    # No access log: a scrape every few seconds would drown the daemon's own events.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _metrics_handler(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_request: web.Request) -> web.Response:
        body = metrics.render().encode("utf-8")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return handle


async def _index(_request: web.Request) -> web.Response:
    return web.Response(text="syncd: metrics are at /metrics\n")
