"""The Host page's Files tab: browse the endpoint's directories in the live session, retrieve a
file into the library (files.get), deploy a library file into the directory shown (files.put).

Each listing is a command of the session (a files.list job, audited like any other); the POST
waits briefly for it, then redirects to a page that shows the job's result, so a reload shows
the same listing instead of asking the endpoint again.
"""

import ntpath
import posixpath
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import Permission
from tether.protocol.action_names import FILES_GET, FILES_LIST, FILES_PUT
from tether.protocol.shell import root_directory
from tether.server.api.deps import PlatformDep
from tether.server.errors import Invalid, PlatformError
from tether.server.services.hosts import HostView
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.host import render_host
from tether.server.web.live_session import send, session_job, tab_url, wait_for

router = APIRouter()
Responder = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE))]
# How long a listing may keep the page waiting before it shows "still running".
LIST_WAIT_SECONDS = 20.0
DEPLOYABLE = 500
# The jobs a Files tab URL may name.
LISTING = frozenset({FILES_LIST})
# The jobs the "started" confirmation may name.
TRANSFERS = frozenset({FILES_GET, FILES_PUT})
PathField = Annotated[str, Form(max_length=4096)]
JobField = Annotated[str, Form(max_length=64)]


def _join(host: HostView, directory: str, name: str) -> str:
    if host.os_family == "windows":
        return ntpath.join(directory, name)
    return posixpath.join(directory, name)


async def _show(
    request: Request,
    platform: PlatformDep,
    user: User,
    host: HostView,
    job_id: str = "",
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    job = await session_job(platform, host, job_id, LISTING)
    directory = root_directory(host.os_family == "windows")
    if job is not None and job.args is not None:
        directory = str(job.args.get("path", directory))
    entries = []
    if job is not None and job.state == "succeeded" and job.result is not None:
        entries = [(e, _join(host, directory, e["name"])) for e in job.result.get("entries", [])]
    library = await platform.files.find(kind="upload", limit=DEPLOYABLE)
    return await render_host(
        request,
        platform,
        user,
        host,
        status=status,
        tab="files",
        error=error,
        notice=notice,
        listing=job,
        entries=entries,
        directory=directory,
        parent=_parent(host, directory),
        library=library,
    )


def _parent(host: HostView, directory: str) -> str:
    if host.os_family == "windows":
        return ntpath.dirname(directory.rstrip("\\/")) or directory
    return posixpath.dirname(directory.rstrip("/")) or "/"


@router.get("/hosts/{ref}/session/files")
async def files_page(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    job: str = "",
    started: str = "",
) -> Response:
    host = await platform.hosts.get(ref)
    notice = None
    # Only a transfer of this host names itself started: a link cannot put its own words here.
    if await session_job(platform, host, started[:64], TRANSFERS) is not None:
        notice = (
            f"Job {started[:64]} started; follow it under Jobs below. A retrieved file appears "
            "in the Files library once its job has finished."
        )
    return await _show(request, platform, user, host, job[:64], notice=notice)


@router.post("/hosts/{ref}/session/files")
async def list_directory(
    ref: str, request: Request, platform: PlatformDep, user: Responder, path: PathField = ""
) -> Response:
    """List `path` on the endpoint as a command of the user's session."""
    host = await platform.hosts.get(ref)
    try:
        job = await send(platform, request, user, host, FILES_LIST, {"path": path.strip()})
    except PlatformError as e:
        return await _show(request, platform, user, host, status=e.status_code, error=str(e))
    await wait_for(platform, job.id, LIST_WAIT_SECONDS)
    return RedirectResponse(tab_url(host, "files", job=job.id), status_code=303)


@router.post("/hosts/{ref}/session/files/retrieve")
async def retrieve_file(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    path: PathField = "",
    listing: JobField = "",
) -> Response:
    """Collect one file into the library (files.get), as a command of the session."""
    host = await platform.hosts.get(ref)
    try:
        job = await send(platform, request, user, host, FILES_GET, {"path": path})
    except PlatformError as e:
        return await _show(
            request, platform, user, host, listing, status=e.status_code, error=str(e)
        )
    return RedirectResponse(tab_url(host, "files", job=listing, started=job.id), status_code=303)


@router.post("/hosts/{ref}/session/files/deploy")
async def deploy_file(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    file: JobField = "",
    directory: PathField = "",
    listing: JobField = "",
    overwrite: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """Write a deployment library file into `directory` under its library name (files.put)."""
    host = await platform.hosts.get(ref)
    try:
        if not file:
            raise Invalid("Choose a file from the deployment library first.")
        entry = await platform.files.get(file)
        if entry.kind != "upload":
            raise Invalid("Only files uploaded to the deployment library can be deployed.")
        args = {
            "sha256": entry.sha256,
            "size": entry.size,
            "path": _join(host, directory, entry.name),
            "overwrite": overwrite == "yes",
        }
        job = await send(platform, request, user, host, FILES_PUT, args)
    except PlatformError as e:
        return await _show(
            request, platform, user, host, listing, status=e.status_code, error=str(e)
        )
    return RedirectResponse(tab_url(host, "files", job=listing, started=job.id), status_code=303)
