"""The emulator's in-memory multipart reader against aiohttp's streaming reader.

The emulator replaced aiohttp's reader for speed; every name, filename and byte must come out
the same for what real clients write (aiohttp's FormData either way of quoting, syncd's own
body), and a malformed body must be refused, not half read.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from syncd import graph
from syncd.emulator import multipart

pytestmark = pytest.mark.timeout(60)

BOUNDARY = "b0undary-7f3a"

_names = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30)
# Form field names are ASCII in every client (aiohttp's writer cannot send others in `name=`);
# filenames and values are anything.
# `_charset_` has its own tests below: aiohttp's reader fails on a form that has one.
_keys = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)
_keys = _keys.filter(lambda key: key != "_charset_")
_file = st.tuples(_keys, st.binary(max_size=200), _names)
_text_field = st.tuples(_keys, _names, st.none())
_fields = st.lists(st.one_of(_file, _text_field), min_size=1, max_size=4)


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


class _Protocol:
    """What aiohttp's StreamReader asks of its protocol: nothing here ever pauses."""

    _reading_paused = False

    def pause_reading(self, **_: object) -> None:
        pass

    def resume_reading(self, **_: object) -> None:
        pass


Seen = list[tuple[str | None, str | None, bytes]]


def _write(fields: list[tuple[str, bytes | str, str | None]], quote: bool) -> bytes:
    form = aiohttp.FormData(quote_fields=quote, default_to_multipart=True)
    for name, value, filename in fields:
        form.add_field(name, value, filename=filename)
    writer = form()
    assert isinstance(writer, aiohttp.MultipartWriter)
    writer._boundary = BOUNDARY.encode()  # one known boundary for both readers
    sink = _Sink()
    asyncio.run(writer.write(sink))  # type: ignore[arg-type]
    return bytes(sink.data)


def _aiohttp_reads(body: bytes) -> Seen:
    async def read() -> Seen:
        stream = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        stream.feed_data(body)
        stream.feed_eof()
        headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        reader = aiohttp.MultipartReader(headers, stream)
        seen: Seen = []
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            seen.append((part.name, part.filename, bytes(await part.read())))
        return seen

    return asyncio.run(read())


def _emulator_reads(body: bytes) -> Seen:
    return [(p.name, p.filename, p.content) for p, _ in multipart.form_fields(body, BOUNDARY)]


@given(fields=_fields, quote=st.booleans())
def test_names_filenames_and_bytes_match_aiohttps_reader(
    fields: list[tuple[str, bytes | str, str | None]], quote: bool
) -> None:
    try:
        body = _write(fields, quote)
    except ValueError:
        return  # a name aiohttp's writer refuses to put in a header at all
    with warnings.catch_warnings():
        # aiohttp's parser warns (and gives no name) for a few of its writer's own headers;
        # the emulator hands such headers to that parser, so both warn alike.
        warnings.simplefilter("ignore", RuntimeWarning)
        assert _outcome(_emulator_reads, body) == _outcome(_aiohttp_reads, body)


def _outcome(read: Callable[[bytes], Seen], body: bytes) -> Seen | str:
    """What a reader made of the body, or that it refused it."""
    try:
        return read(body)
    except (ValueError, HttpProcessingError):
        return "refused"


@given(name=_names, data=st.binary(max_size=300))
def test_syncds_upload_body_reads_as_aiohttp_reads_it(name: str, data: bytes) -> None:
    body = graph.multipart_body(name, data, BOUNDARY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # as above
        assert _emulator_reads(body) == _aiohttp_reads(body)
    if not set(name) & set('\\"/'):  # what upload_name makes: read back exactly as sent
        assert _emulator_reads(body) == [("filename", name, data)]


def test_preamble_padding_and_epilogue_are_ignored() -> None:
    body = (
        b"a preamble\r\n--" + BOUNDARY.encode() + b" \t\r\n"
        b'Content-Disposition: form-data; name="a"\r\n\r\n1\r\n--' + BOUNDARY.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="f"; filename="x.png"\r\n\r\n'
        b"\r\n--not-it\r\n\r\n--" + BOUNDARY.encode() + b"--\r\nan epilogue"
    )
    assert _emulator_reads(body) == [("a", None, b"1"), ("f", "x.png", b"\r\n--not-it\r\n")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "without its boundary"),
        (b"--" + BOUNDARY.encode() + b"\r\n\r\nno end", "ends inside a part"),
        (b"--" + BOUNDARY.encode() + b"x\r\n\r\n", "not followed by a line break"),
        (
            b"--" + BOUNDARY.encode() + b"\r\nNo-Colon\r\n\r\nx\r\n--" + BOUNDARY.encode() + b"--",
            "malformed multipart header",
        ),
        (
            b"--" + BOUNDARY.encode() + b"\r\nA: b\r\nx\r\n--" + BOUNDARY.encode() + b"--",
            "without the blank line",
        ),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        _emulator_reads(body)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (f"multipart/form-data; boundary={BOUNDARY}", BOUNDARY),
        (f'multipart/form-data; charset=utf-8; Boundary="{BOUNDARY}"', BOUNDARY),
    ],
)
def test_boundary_of(content_type: str, expected: str) -> None:
    assert multipart.boundary_of(content_type) == expected


def test_no_boundary_is_refused() -> None:
    with pytest.raises(ValueError, match="without a boundary"):
        multipart.boundary_of('multipart/form-data; boundary=""')


def test_field_text_uses_its_charset_and_refuses_transfer_encodings() -> None:
    latin = multipart.Part({"content-type": "text/plain; charset=latin-1"}, "a", None, b"\xe9")
    assert multipart.field_text(latin, "utf-8") == "é"
    encoded = multipart.Part({"content-transfer-encoding": "base64"}, "a", None, b"YQ==")
    with pytest.raises(ValueError, match="content-transfer-encoding"):
        multipart.field_text(encoded, "utf-8")


def _charset_form(charset: bytes, value: bytes) -> bytes:
    b = BOUNDARY.encode()
    return (
        b"--"
        + b
        + b'\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n'
        + charset
        + b"\r\n--"
        + b
        + b'\r\nContent-Disposition: form-data; name="v"\r\n\r\n'
        + value
        + b"\r\n--"
        + b
        + b"--\r\n"
    )


def test_a_leading_charset_field_sets_the_charset_of_the_rest_and_is_no_field() -> None:
    fields = list(multipart.form_fields(_charset_form(b"latin-1", b"\xe9"), BOUNDARY))
    assert [(p.name, charset) for p, charset in fields] == [("v", "latin-1")]
    assert multipart.field_text(fields[0][0], fields[0][1]) == "é"


@pytest.mark.parametrize("charset", [b"", b"x" * 32, b"\x80"])
def test_a_charset_field_that_names_no_charset_is_refused(charset: bytes) -> None:
    with pytest.raises(ValueError, match="names no charset"):
        list(multipart.form_fields(_charset_form(charset, b"v"), BOUNDARY))


def test_an_unknown_charset_is_refused_when_a_field_needs_it() -> None:
    ((part, charset),) = multipart.form_fields(_charset_form(b"no-such", b"v"), BOUNDARY)
    with pytest.raises(ValueError, match="unknown charset 'no-such'"):
        multipart.field_text(part, charset)
