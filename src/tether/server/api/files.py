"""The file library: upload tools, list and download what was uploaded or retrieved."""

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, require, source_of
from tether.server.api.view_out import ViewOut
from tether.server.errors import Forbidden
from tether.server.services.access import user_refusal
from tether.server.services.files import LibraryFile
from tether.server.services.users import User
from tether.server.store.blobs import BlobReader

router = APIRouter(tags=["files"])

DOWNLOAD_CHUNK = 1024 * 1024


class LibraryFileOut(ViewOut):
    id: str
    kind: str
    name: str
    sha256: str
    size: int
    host_id: str | None
    hostname: str | None
    source_path: str | None
    file_mtime: datetime | None
    file_owner: str | None
    file_mode: str | None
    job_id: str | None
    created_by: str
    created_at: datetime


def _out(entry: LibraryFile) -> LibraryFileOut:
    return LibraryFileOut.of(entry)


Responder = Annotated[User, Depends(require(Permission.ACTIVE_RESPONSE))]


def _second_factor(user: User) -> None:
    refusal = user_refusal(user)
    if refusal is not None:
        raise Forbidden(refusal)


@router.get("/files", response_model=list[LibraryFileOut])
async def list_files(
    platform: PlatformDep,
    _user: Annotated[User, Depends(require(Permission.RESULTS_READ))],
    kind: Literal["upload", "retrieved"] | None = None,
    job: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[LibraryFileOut]:
    """Library files, newest first; `job` finds the file a files.get job retrieved."""
    return [_out(f) for f in await platform.files.find(kind=kind, job_id=job, limit=limit)]


@router.get("/files/{ref}", response_model=LibraryFileOut)
async def get_file(
    ref: str,
    platform: PlatformDep,
    _user: Annotated[User, Depends(require(Permission.RESULTS_READ))],
) -> LibraryFileOut:
    return _out(await platform.files.get(ref))


@router.post("/files", response_model=LibraryFileOut, status_code=201)
async def upload_file(
    request: Request,
    platform: PlatformDep,
    user: Responder,
    name: Annotated[str, Query(min_length=1, max_length=255)],
) -> LibraryFileOut:
    """Upload the request body as a library file named `name` (streamed, never held whole)."""
    _second_factor(user)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    entry = await platform.files.upload(name, body(), actor=user.actor, source=source_of(request))
    return _out(entry)


@router.get("/files/{ref}/content")
async def download_file(
    ref: str, request: Request, platform: PlatformDep, user: Responder
) -> StreamingResponse:
    """The file's bytes. Retrieved files may be malware: responders only, and audited."""
    _second_factor(user)
    entry, reader = await platform.files.open(ref, actor=user.actor, source=source_of(request))
    return download_response(entry, reader)


def attachment(name: str) -> str:
    """A Content-Disposition that saves the file under its library name, never shows it: an
    ASCII fallback with everything but letters, digits, dot, dash and underscore replaced, and
    the exact name percent-encoded (RFC 6266), so no quote or semicolon can end the value."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_response(entry: LibraryFile, reader: BlobReader) -> StreamingResponse:
    """The file's bytes as a download (the API's and the web page's), closing `reader` at the
    end; the caller has opened it through `FileLibrary.open`, which audits the download."""

    async def content() -> AsyncIterator[bytes]:
        try:
            offset = 0
            while offset < reader.size:
                chunk = await reader.read_at(offset, DOWNLOAD_CHUNK)
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            reader.close()

    return StreamingResponse(
        content(),
        media_type="application/octet-stream",
        headers={
            "content-length": str(reader.size),
            "x-tether-sha256": entry.sha256,
            # Never rendered inline by a browser, whatever the bytes are.
            "content-disposition": attachment(entry.name),
            "x-content-type-options": "nosniff",
        },
    )
