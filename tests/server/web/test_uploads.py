"""The upload form read as it arrives: fields before the file, the file's bytes in order however
the body is cut into chunks, and one sentence for anything else."""

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Message

from tether.server.web.uploads import (
    MAX_FIELD_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    NO_FILE,
    NOT_A_FORM,
    UploadFormError,
    read_upload_form,
)


def request_of(body: bytes, content_type: str, chunk: int) -> Request:
    """A request whose body arrives `chunk` bytes at a time, as a slow client sends it."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> Message:
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/files/upload",
        "headers": [(b"content-type", content_type.encode())],
    }
    return Request(scope, receive)


def encoded(
    fields: dict[str, str], files: dict[str, tuple[str | None, bytes]]
) -> tuple[bytes, str]:
    built = httpx.Request("POST", "https://x/", data=fields, files=files)
    return built.read(), built.headers["content-type"]


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
async def test_fields_then_the_file_in_any_chunking(chunk: int) -> None:
    data = os.urandom(50_000) + b"\r\n--not-the-boundary\r\n"
    body, content_type = encoded(
        {"csrf_token": "t0ken", "name": "x.bin"}, {"file": ("local.bin", data)}
    )
    form = await read_upload_form(request_of(body, content_type, chunk))
    assert form.fields == {"csrf_token": "t0ken", "name": "x.bin"}
    assert form.filename == "local.bin"
    assert await read_all(form.content) == data


async def test_refusals_are_one_sentence() -> None:
    cases = [
        (b"plain", "application/octet-stream", NOT_A_FORM),
        (*encoded({"csrf_token": "t"}, {}), NOT_A_FORM),  # urlencoded
        (*encoded({}, {"csrf_token": (None, b"t")}), NO_FILE),  # multipart, fields only
        (*encoded({"csrf_token": "t"}, {"file": ("", b"")}), NO_FILE),
        (*encoded({"csrf_token": "t" * (MAX_FIELD_BYTES + 1)}, {"file": ("a", b"")}), NOT_A_FORM),
    ]
    for body, content_type, sentence in cases:
        with pytest.raises(UploadFormError) as caught:
            await read_upload_form(request_of(body, content_type, 100))
        assert str(caught.value) == sentence


async def test_a_body_cut_off_inside_the_file_is_refused() -> None:
    body, content_type = encoded({"csrf_token": "t"}, {"file": ("a", b"z" * 10_000)})
    form = await read_upload_form(request_of(body[:5_000], content_type, 999))
    with pytest.raises(UploadFormError, match=NOT_A_FORM):
        await read_all(form.content)


@pytest.mark.parametrize("chunk", [100, 1 << 20])
async def test_part_headers_are_bounded_before_any_check(chunk: int) -> None:
    boundary = "b0undary"
    # Otherwise a well-formed upload: without the bounds both would be read as one.
    the_file = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=a\r\n\r\n"
        f"z\r\n--{boundary}--\r\n"
    )
    long_value = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=csrf_token\r\n"
        f"X-Padding: {'p' * (MAX_HEADER_BYTES + 1)}\r\n\r\nt\r\n{the_file}"
    )
    many = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=csrf_token\r\n"
        + "X-A: b\r\n" * (MAX_HEADERS + 1)
        + f"\r\nt\r\n{the_file}"
    )
    for body in (long_value, many):
        request = request_of(body.encode(), f"multipart/form-data; boundary={boundary}", chunk)
        with pytest.raises(UploadFormError) as caught:
            await read_upload_form(request)
        assert str(caught.value) == NOT_A_FORM
