"""Reading a `multipart/form-data` body that is already in memory, part by part.

aiohttp's streaming reader parsed each part's Content-Disposition with a routine that builds a
regular expression from scratch on every call: with the rest of its per-chunk machinery, more
than a third of the emulator's CPU per upload. Meta's servers take concurrent uploads in
parallel; the emulator takes them one at a time on a machine it shares with the client, so
its per-upload cost queued syncd's concurrent uploads behind each other. The body is bounded
by the app's `client_max_size`, so it is read whole and split here.

The common header shape, `form-data; name="..."[; filename="..."]` with plain values, is read
by one regular expression; anything else (escapes, percent-encoding, RFC 5987 `filename*`)
goes to aiohttp's own parser, so both readers give the same names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp.multipart import content_disposition_filename, parse_content_disposition

# Values with none of the characters aiohttp's parser treats specially: quote, backslash,
# slash (it strips leading ones), percent, semicolon, and control characters.
_PLAIN = r'"([^"\\/%;\x00-\x1f\x7f]*)"'
_SIMPLE_DISPOSITION = re.compile(rf"form-data; name={_PLAIN}(?:; filename={_PLAIN})?")
_TRANSPORT_PADDING = b" \t"


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its headers (names lower case), its form field name and filename."""

    headers: dict[str, str]
    name: str | None
    filename: str | None
    content: bytes


def boundary_of(content_type: str) -> str:
    """The `boundary` parameter of a multipart Content-Type header; ValueError if none."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    raise ValueError("multipart body without a boundary")


def parts(body: bytes, boundary: str) -> Iterator[Part]:
    """The parts of `body` in order (RFC 2046 framing); ValueError if it is malformed."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = _after_first_delimiter(body, delimiter)
    separator = b"\r\n" + delimiter
    while True:
        if body.startswith(b"--", start):
            return  # the close delimiter: whatever follows is epilogue
        start = _line_end(body, start)
        end = body.find(separator, start)
        if end < 0:
            raise ValueError("multipart body ends inside a part")
        yield _part(body[start:end])
        start = end + len(separator)


def _after_first_delimiter(body: bytes, delimiter: bytes) -> int:
    if body.startswith(delimiter):
        return len(delimiter)
    found = body.find(b"\r\n" + delimiter)  # after a preamble
    if found < 0:
        raise ValueError("multipart body without its boundary")
    return found + 2 + len(delimiter)


def _line_end(body: bytes, start: int) -> int:
    """Past the transport padding and CRLF that end a delimiter line."""
    while start < len(body) and body[start] in _TRANSPORT_PADDING:
        start += 1
    if not body.startswith(b"\r\n", start):
        raise ValueError("multipart delimiter not followed by a line break")
    return start + 2


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):  # no headers at all
        head, content = b"", raw[2:]
    else:
        head, sep, content = raw.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without the blank line after its headers")
    headers = _headers(head)
    name, filename = _disposition(headers.get("content-disposition"))
    return Part(headers, name, filename, content)


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "surrogateescape").split("\r\n") if head else ():
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            raise ValueError(f"malformed multipart header line {line[:80]!r}")
        headers[key.lower()] = value.strip()
    return headers


def _disposition(header: str | None) -> tuple[str | None, str | None]:
    """The part's form field name and filename, exactly as aiohttp's reader gives them."""
    if header is not None and (plain := _SIMPLE_DISPOSITION.fullmatch(header)) is not None:
        return plain[1], plain[2]
    _, params = parse_content_disposition(header)
    return content_disposition_filename(params, "name"), content_disposition_filename(params)


def form_fields(body: bytes, boundary: str) -> Iterator[tuple[Part, str]]:
    """The form's parts with the charset of each text field, as RFC 7578 reads them.

    A leading `_charset_` field names the default charset (as aiohttp's reader takes it: the
    field itself is not a parameter); nested multipart parts are left out.
    """
    charset = "utf-8"
    for index, part in enumerate(parts(body, boundary)):
        if index == 0 and part.name == "_charset_":
            charset = _default_charset(part)
        elif not part.headers.get("content-type", "").lower().startswith("multipart/"):
            yield part, charset


def _default_charset(part: Part) -> str:
    label = part.content.strip()
    # The longest WHATWG encoding label is 19 characters; labels are ASCII.
    if not label or len(part.content) > 31 or not label.isascii():
        raise ValueError("a _charset_ field that names no charset")
    return label.decode("ascii")


def field_text(part: Part, default_charset: str) -> str:
    """A plain field's value, decoded by its own charset or the body's default.

    Transfer and content encodings (base64, gzip...) are refused: no Graph client sends them.
    """
    for header in ("content-transfer-encoding", "content-encoding"):
        if part.headers.get(header, "identity").lower() not in ("identity", "binary", "8bit"):
            raise ValueError(f"multipart field with {header} {part.headers[header]!r}")
    charset = _charset(part.headers.get("content-type", "")) or default_charset
    try:
        return part.content.decode(charset)
    except LookupError as exc:
        raise ValueError(f"unknown charset {charset!r}") from exc


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None
