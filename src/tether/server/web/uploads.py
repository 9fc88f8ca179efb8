"""A multipart/form-data upload read as it arrives: the small fields first, then the file's bytes
as a stream, so a file goes straight to the platform's store and never sits whole in memory or in
a temporary file (Starlette's `request.form()` would spool it to disk before any check ran).

The form must put its text fields (the CSRF token, an optional name) before the file input, as a
browser sends them in document order; the handler checks the token before reading any file byte.
"""

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

# A text field holds a token or a file name; anything longer is not this form.
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 8
# A part's headers (a browser sends two short ones), counted before the CSRF token is checked:
# anyone can send them, so they may not grow the request's memory without bound.
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 16
NOT_A_FORM = "Send the upload as a multipart form with the file last."
NO_FILE = "Choose a file to upload."


class UploadFormError(Exception):
    """The request is not the upload form; the message is one sentence for the page."""


@dataclass(frozen=True)
class _Begin:
    pass


@dataclass(frozen=True)
class _Header:
    name: bytes
    value: bytes


@dataclass(frozen=True)
class _Data:
    data: bytes


@dataclass(frozen=True)
class _End:
    pass


_Event = _Begin | _Header | _Data | _End


class _Parts:
    """The parser's callbacks, turned into events pulled one request chunk at a time."""

    def __init__(self, request: Request, boundary: bytes) -> None:
        self._body = request.stream().__aiter__()
        self._events: deque[_Event] = deque()
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._headers = 0
        self._finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._header_piece(self._field, d[s:e]),
                "on_header_value": lambda d, s, e: self._header_piece(self._value, d[s:e]),
                "on_header_end": self._header_end,
                "on_part_data": lambda d, s, e: self._events.append(_Data(bytes(d[s:e]))),
                "on_part_end": lambda: self._events.append(_End()),
            },
        )

    def _part_begin(self) -> None:
        self._header_bytes = self._headers = 0
        self._events.append(_Begin())

    def _header_piece(self, into: bytearray, piece: bytes) -> None:
        """Part of a header's name or value; UploadFormError once the part's headers are more
        than a form sends (raised out of the parser's write)."""
        self._header_bytes += len(piece)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise UploadFormError(NOT_A_FORM)
        into.extend(piece)

    def _header_end(self) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            raise UploadFormError(NOT_A_FORM)
        self._events.append(_Header(bytes(self._field).lower(), bytes(self._value)))
        self._field.clear()
        self._value.clear()

    async def next_event(self) -> _Event | None:
        """The next event, reading more of the body when none is waiting; None at its end."""
        while not self._events:
            if self._finished:
                return None
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._finished = True
                self._parser.finalize()
                continue
            try:
                self._parser.write(chunk)
            except FormParserError as e:
                raise UploadFormError(NOT_A_FORM) from e
        return self._events.popleft()


@dataclass
class UploadForm:
    """The text fields before the file, the file's name as the browser sent it, and its bytes
    (an iterator to read once, after the fields were checked)."""

    fields: dict[str, str]
    filename: str
    content: AsyncIterator[bytes]


def _disposition(headers: list[_Header]) -> tuple[str, str | None]:
    """The part's form field name and, for a file input, its file name."""
    for header in headers:
        if header.name == b"content-disposition":
            kind, options = parse_options_header(header.value)
            if kind != b"form-data" or b"name" not in options:
                break
            filename = options.get(b"filename")
            return (
                options[b"name"].decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
            )
    raise UploadFormError(NOT_A_FORM)


async def read_upload_form(request: Request) -> UploadForm:
    """Read the text fields up to the first file part; UploadFormError (one sentence) when the
    request is not such a form or holds no file."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadFormError(NOT_A_FORM)
    try:
        parts = _Parts(request, boundary)
    except FormParserError as e:
        raise UploadFormError(NOT_A_FORM) from e
    fields: dict[str, str] = {}
    while True:
        if not isinstance(await parts.next_event(), _Begin):
            raise UploadFormError(NO_FILE)
        headers: list[_Header] = []
        event = await parts.next_event()
        while isinstance(event, _Header):
            headers.append(event)
            event = await parts.next_event()
        name, filename = _disposition(headers)
        if filename is not None:
            if not filename:
                raise UploadFormError(NO_FILE)
            return UploadForm(fields, filename, _content(parts, event))
        value = bytearray()
        while isinstance(event, _Data):
            value.extend(event.data)
            if len(value) > MAX_FIELD_BYTES:
                raise UploadFormError(NOT_A_FORM)
            event = await parts.next_event()
        if not isinstance(event, _End) or len(fields) >= MAX_FIELDS:
            raise UploadFormError(NOT_A_FORM)
        fields[name] = value.decode("utf-8", "replace")


async def _content(parts: _Parts, first: _Event | None) -> AsyncIterator[bytes]:
    """The file part's bytes up to its end; UploadFormError if the body stops before it."""
    event = first
    while isinstance(event, _Data):
        yield event.data
        event = await parts.next_event()
    if not isinstance(event, _End):
        raise UploadFormError(NOT_A_FORM)
