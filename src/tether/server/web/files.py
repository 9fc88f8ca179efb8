"""The Files page: retrieved files with their chain of custody and download, and the deployment
library with its upload form.

Permissions are the API's (/api/v1/files): results readers see the lists and a file's entry;
downloading and uploading need the Active Response role with the second factor passed, and the
audit records of a file's custody are shown to those who may read the audit log.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.api.files import download_response
from tether.server.errors import NotFound, PlatformError
from tether.server.services.access import user_refusal
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web.access import PageForbidden, check_csrf, page_require
from tether.server.web.security import CSRF_FIELD, CSRF_HEADER
from tether.server.web.templating import render
from tether.server.web.uploads import UploadFormError, read_upload_form

router = APIRouter()
Reader = Annotated[User, Depends(page_require(Permission.RESULTS_READ))]
Responder = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE))]
# The upload's CSRF token is the form's first field, checked here before any file byte is read.
Uploader = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE, csrf_in_handler=True))]
SHOWN = 500


def _second_factor(user: User) -> None:
    """The API's check before a download or upload, with its sentence."""
    refusal = user_refusal(user)
    if refusal is not None:
        raise PageForbidden(refusal)


async def _files_page(
    request: Request,
    platform: Platform,
    user: User,
    *,
    status_code: int = 200,
    upload_error: str | None = None,
) -> Response:
    query = request.query_params
    f = {n: query.get(n, "")[:200] for n in ("host", "name")}
    retrieved = await platform.files.find(
        kind="retrieved", host=f["host"], name=f["name"], limit=SHOWN
    )
    library = await platform.files.find(kind="upload", limit=SHOWN)
    return render(
        request,
        "files.html",
        status_code,
        f=f,
        retrieved=retrieved,
        library=library,
        shown=SHOWN,
        responder=Permission.ACTIVE_RESPONSE in user.permissions,
        upload_error=upload_error,
    )


@router.get("/files")
async def files_page(request: Request, platform: PlatformDep, user: Reader) -> Response:
    return await _files_page(request, platform, user)


@router.get("/files/{ref}")
async def file_page(ref: str, request: Request, platform: PlatformDep, user: Reader) -> Response:
    try:
        entry = await platform.files.get(ref)
    except NotFound as e:
        return render(request, "message.html", 404, heading="File not found", message=str(e))
    may_read_audit = Permission.AUDIT_READ in user.permissions
    custody = await platform.files.custody(entry) if may_read_audit else None
    return render(
        request,
        "file.html",
        e=entry,
        custody=[(r, r.details_object()) for r in custody.records] if custody else [],
        custody_more=custody is not None and custody.more,
        may_read_audit=may_read_audit,
        responder=Permission.ACTIVE_RESPONSE in user.permissions,
    )


@router.get("/files/{ref}/content")
async def download(ref: str, request: Request, platform: PlatformDep, user: Responder) -> Response:
    """The bytes, exactly as the API serves them: an audited attachment, never shown inline."""
    _second_factor(user)
    try:
        entry, reader = await platform.files.open(ref, actor=user.actor, source=source_of(request))
    except NotFound as e:
        return render(request, "message.html", 404, heading="File not found", message=str(e))
    return download_response(entry, reader)


@router.post("/files/upload")
async def upload(request: Request, platform: PlatformDep, user: Uploader) -> Response:
    """A file for the deployment library, streamed from the form into the store."""
    try:
        form = await read_upload_form(request)
    except UploadFormError as e:
        return await _files_page(request, platform, user, status_code=400, upload_error=str(e))
    check_csrf(request, request.headers.get(CSRF_HEADER) or form.fields.get(CSRF_FIELD))
    _second_factor(user)
    name = form.fields.get("name") or form.filename
    try:
        entry = await platform.files.upload(
            name, form.content, actor=user.actor, source=source_of(request)
        )
    except (PlatformError, UploadFormError) as e:
        status = e.status_code if isinstance(e, PlatformError) else 400
        return await _files_page(request, platform, user, status_code=status, upload_error=str(e))
    return RedirectResponse(f"/files/{entry.id}", status_code=303)
