"""Structured logs: JSON lines for journald, readable lines on a terminal, secrets never.

Every event goes through one processor chain: per-task context (account, path, attempt)
from contextvars, level, ISO 8601 UTC timestamp, exception formatting, then redaction, then
rendering. Records from the stdlib `logging` module (aiohttp, asyncio) are handed to the same
chain, so a library that logs a request URL or header cannot leak the token either.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO, cast

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from syncd.secrets import Redactor

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "json", "console")
# Deeper structures are rendered by repr and redacted as text (also ends self-reference).
_MAX_DEPTH = 16


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Set up structlog and route stdlib logging through it; safe to call again.

    `fmt` "auto" renders for a human when `stream` (default: stdout) is a terminal and as
    JSON lines otherwise. Pass a `Redactor` early and `add` secrets to it once loaded: the
    chain keeps a reference, so later additions take effect at once.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and _is_terminal(out))
    structlog.configure(
        processors=_processors(console, out, redactor or Redactor()),
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=_WriterFactory(out),
        context_class=dict,
        # Tests (and a reload) reconfigure; cached loggers would keep the old chain.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(LEVELS[level])


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A logger for events; `name` (e.g. `__name__`) is logged as the `logger` field."""
    # The name travels as a logger-factory argument, not as bound context: binding would
    # resolve the lazy proxy now, and a module-level logger must follow reconfiguration.
    logger = structlog.get_logger() if name is None else structlog.get_logger(name)
    return cast(FilteringBoundLogger, logger)


def redact_processor(redactor: Redactor) -> Processor:
    """A processor that replaces every secret `redactor` knows, in every value, with ***."""

    def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        return {_scrub(k, redactor, 0): _scrub(v, redactor, 0) for k, v in event_dict.items()}

    return redact


def _scrub(value: Any, redactor: Redactor, depth: int) -> Any:
    """`value` with secrets replaced; containers are copied, never changed in place."""
    if isinstance(value, str):
        return redactor.redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth < _MAX_DEPTH and isinstance(value, Mapping):
        return {
            _scrub(k, redactor, depth + 1): _scrub(v, redactor, depth + 1) for k, v in value.items()
        }
    if depth < _MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
        items = [_scrub(item, redactor, depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    # Anything else reaches the renderers as its repr (exceptions, paths, bytes, objects):
    # check that text, and hand on the redacted text only when a secret was in it.
    text = repr(value)
    clean = redactor.redact(text)
    return value if clean == text else clean


def _processors(console: bool, out: TextIO, redactor: Redactor) -> list[Processor]:
    renderer: Processor
    exceptions: Processor
    if console:
        # NO_COLOR: https://no-color.org, the convention terminal users set to turn colour off.
        colors = _is_terminal(out) and "NO_COLOR" not in os.environ
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
        # Format tracebacks into text *before* redaction: the console renderer's own
        # exception formatting would run after it and could print a secret.
        exceptions = structlog.processors.format_exc_info
    else:
        renderer = structlog.processors.JSONRenderer()
        # No locals: they are large, and exactly where a token sits in a request function.
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
    return [
        structlog.contextvars.merge_contextvars,
        _add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        exceptions,
        redact_processor(redactor),
        _redacting(renderer, redactor),
    ]


def _redacting(renderer: Processor, redactor: Redactor) -> Processor:
    """The renderer, with its output redacted once more (renderers may call __repr__ etc.)."""

    def render(logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        line = renderer(logger, method, event_dict)
        return redactor.redact(line) if isinstance(line, str) else line

    return render


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that remembers the name `get_logger(name)` asked for."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _WriterFactory:
    """Makes the loggers structlog wraps: all write to one stream, each keeps its name."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedWriteLogger(self._file, name)


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _ToStructlog(logging.Handler):
    """Hands stdlib log records to structlog, so they share its chain, redaction and output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments; the stdlib would print them raw to stderr
            message = f"{record.msg} (log arguments did not format)"
        fields: dict[str, Any] = {}
        if record.exc_info and record.exc_info[0] is not None:
            fields["exc_info"] = record.exc_info
        if record.stack_info:
            fields["stack"] = record.stack_info
        try:
            get_logger(record.name).log(_structlog_level(record.levelno), message, **fields)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # The stdlib version prints the record's arguments, which may hold a secret.
        sys.stderr.write(f"syncd: could not write a log record from {record.name}\n")


def _structlog_level(levelno: int) -> int:
    """The nearest standard level at or below `levelno` (custom levels have no name)."""
    standard = (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO)
    return next((level for level in standard if levelno >= level), logging.DEBUG)


def _route_stdlib(level: int) -> None:
    """Replace our handler on the root logger (others, like pytest's, are left alone)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(level)
