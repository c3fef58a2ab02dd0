"""Logs: JSON and console output, bound context, level filtering, and no token, ever."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from syncd.logs import configure_logging, get_logger, redact_processor
from syncd.secrets import Redactor, Token, appsecret_proof

TOKEN = "EAAB-secret-token-123"
APP_SECRET = "app-secret-456"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stdout on a console does."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def setup(fmt: str = "json", level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level=level, fmt=fmt, stream=stream, redactor=Redactor(TOKEN, APP_SECRET))
    return stream


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Leaky:
    """An object whose repr carries the token, as a careless request object might."""

    def __repr__(self) -> str:
        return f"Leaky(token={TOKEN})"


def log_the_token_every_way() -> None:
    """Each way a token could reach a log line, once."""
    log = get_logger("syncd.test")
    log.info("as_field", token=TOKEN)
    log.info(f"in the message {TOKEN}")
    log.info("positional %s", TOKEN)
    log.info("nested", request={"headers": {"Authorization": f"OAuth {TOKEN}"}, "ids": [TOKEN]})
    log.info("in_a_tuple", pair=(1, TOKEN), tags={TOKEN})
    log.info("as_key", **{"mapping": {TOKEN: 1}})
    log.info("object", thing=Leaky(), error=ValueError(f"bad token {TOKEN}"))
    log.info("quoted_url", url=f"https://h/x?access_token={TOKEN}")
    log.info("proof", proof=appsecret_proof(Token(TOKEN), Token(APP_SECRET)))
    log.info("app_secret", secret=APP_SECRET)
    try:
        raise RuntimeError(f"request failed with token {TOKEN}")
    except RuntimeError:
        log.exception("upload_failed")
    try:
        raise KeyError(TOKEN)
    except KeyError as exc:
        log.error("error_with_exc_info", exc_info=exc)
    aiohttp_log = logging.getLogger("aiohttp.client")
    aiohttp_log.error("request to https://graph/?access_token=%s failed", TOKEN)
    try:
        raise ConnectionError(f"reset while sending Bearer {TOKEN}")
    except ConnectionError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")


# ------------------------------------------------------------------ format


def test_json_lines_have_event_level_timestamp_and_bound_fields() -> None:
    stream = setup("json")
    structlog.contextvars.bind_contextvars(account="123", path="a/b.jpg")
    get_logger().bind(attempt=2).info("upload_done", hash="abc")
    (event,) = events(stream)
    assert event["event"] == "upload_done"
    assert event["level"] == "info"
    assert ISO_UTC.match(event["timestamp"]), event["timestamp"]
    assert (event["account"], event["path"], event["attempt"], event["hash"]) == (
        "123",
        "a/b.jpg",
        2,
        "abc",
    )


def test_get_logger_name_is_a_field() -> None:
    stream = setup("json")
    get_logger("syncd.scanner").warning("folder_missing")
    (event,) = events(stream)
    assert event["logger"] == "syncd.scanner"
    assert event["level"] == "warning"


def test_console_lines_are_readable() -> None:
    stream = setup("console")
    get_logger().info("upload_done", account="123", path="a.jpg")
    line = stream.getvalue()
    assert not line.startswith("{")
    assert "upload_done" in line
    assert "account=123" in line
    assert "path=a.jpg" in line
    assert "\x1b[" not in line  # not a terminal: no colour codes


def test_auto_picks_json_off_a_terminal_and_console_on_one() -> None:
    pipe = io.StringIO()
    configure_logging(fmt="auto", stream=pipe)
    get_logger().info("hello")
    assert json.loads(pipe.getvalue())["event"] == "hello"

    terminal = Terminal()
    configure_logging(fmt="auto", stream=terminal)
    get_logger().info("hello")
    assert not terminal.getvalue().startswith("{")
    assert "hello" in terminal.getvalue()


def test_json_exception_is_structured_without_locals() -> None:
    stream = setup("json")
    secret_local = "a local variable"
    try:
        raise ValueError(secret_local)
    except ValueError:
        get_logger().exception("failed")
    (event,) = events(stream)
    assert event["level"] == "error"
    (trace,) = event["exception"]
    assert trace["exc_type"] == "ValueError"
    assert all("locals" not in frame for frame in trace["frames"])


def test_console_exception_shows_the_traceback() -> None:
    stream = setup("console")
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger().exception("failed")
    assert "Traceback" in stream.getvalue()
    assert "ValueError: boom" in stream.getvalue()


def test_stdlib_records_share_the_output() -> None:
    stream = setup("json")
    logging.getLogger("aiohttp.access").warning("slow %s", "request")
    (event,) = events(stream)
    assert event == {
        "event": "slow request",
        "logger": "aiohttp.access",
        "level": "warning",
        "timestamp": event["timestamp"],
    }


def test_stdlib_custom_and_critical_levels() -> None:
    stream = setup("json", level="debug")
    logging.getLogger("x").log(25, "between info and warning")
    logging.getLogger("x").critical("down")
    logging.getLogger("x").log(5, "below debug")
    assert [e["level"] for e in events(stream)] == ["info", "critical"]


def test_stdlib_bad_arguments_do_not_crash_or_leak(capsys: pytest.CaptureFixture[str]) -> None:
    stream = setup("json")
    # pytest's own capture handlers re-raise formatting errors; leave only ours on the root.
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if type(h).__module__ == "syncd.logs"]
    logging.getLogger("x").error("two %s %s", TOKEN)
    (event,) = events(stream)
    assert "did not format" in event["event"]
    assert TOKEN not in stream.getvalue() + capsys.readouterr().err


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_token_never_appears(fmt: str) -> None:
    stream = setup(fmt)
    log_the_token_every_way()
    output = stream.getvalue()
    assert output.count("\n") >= 14
    assert TOKEN not in output
    assert APP_SECRET not in output
    assert appsecret_proof(Token(TOKEN), Token(APP_SECRET)) not in output
    assert "***" in output
    assert "upload_failed" in output
    assert "request to https://graph/?access_token=*** failed" in output


def test_json_redaction_keeps_structure() -> None:
    stream = setup("json")
    get_logger().info("nested", request={"headers": {"Authorization": f"OAuth {TOKEN}"}}, n=3)
    (event,) = events(stream)
    assert event["request"] == {"headers": {"Authorization": "OAuth ***"}}
    assert event["n"] == 3


def test_secret_added_after_configuration_is_redacted() -> None:
    redactor = Redactor()
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, redactor=redactor)
    redactor.add(TOKEN)
    get_logger().info("late", token=TOKEN)
    assert TOKEN not in stream.getvalue()


def test_redact_processor_does_not_change_the_callers_objects() -> None:
    processor = redact_processor(Redactor(TOKEN))
    request = {"token": TOKEN, "list": [TOKEN, 1, None], "path": Path("/srv")}
    out = processor(None, "info", {"event": "x", "request": request})
    assert out == {
        "event": "x",
        "request": {"token": "***", "list": ["***", 1, None], "path": Path("/srv")},
    }
    assert request["token"] == TOKEN


def test_redact_processor_survives_self_reference() -> None:
    loop: list[Any] = [TOKEN]
    loop.append(loop)
    out = redact_processor(Redactor(TOKEN))(None, "info", {"event": "x", "loop": loop})
    assert TOKEN not in repr(out)


# ------------------------------------------------------------------ levels and reconfiguration


def test_level_filtering() -> None:
    stream = setup("json", level="warning")
    log = get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("aiohttp.client").info("stdlib info")
    logging.getLogger("aiohttp.client").warning("stdlib warning")
    assert [e["event"] for e in events(stream)] == ["w", "e", "stdlib warning"]


def test_debug_level_shows_debug() -> None:
    stream = setup("json", level="debug")
    get_logger().debug("d")
    logging.getLogger("asyncio").debug("stdlib debug")
    assert [e["event"] for e in events(stream)] == ["d", "stdlib debug"]


def test_reconfiguring_moves_output_and_keeps_one_handler() -> None:
    first = setup("json")
    module_logger = get_logger("syncd.module")  # as a module would, at import time
    second = setup("json", level="error")
    module_logger.error("after")
    module_logger.info("filtered")
    logging.getLogger("x").error("stdlib after")
    assert first.getvalue() == ""
    assert [e["event"] for e in events(second)] == ["after", "stdlib after"]
    ours = [h for h in logging.getLogger().handlers if type(h).__module__ == "syncd.logs"]
    assert len(ours) == 1


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_level_or_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level=level, fmt=fmt, stream=io.StringIO())
