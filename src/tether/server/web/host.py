"""The Host page: one host's facts, isolation state, latest jobs and, for responders, the live
session (console, files, processes; docs/adr/0022)."""

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import FINAL_STATES, Permission
from tether.server.api.deps import PlatformDep
from tether.server.services.hosts import HostView
from tether.server.services.jobs import JobView
from tether.server.services.live_sessions import LiveSessionView
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.notice import forget_notice, read_notice
from tether.server.web.polled_rows import SEEN, digest, unchanged, unfinished
from tether.server.web.templating import render

router = APIRouter()
Reader = Annotated[User, Depends(page_require(Permission.HOSTS_READ))]
# The jobs table alone is results (as GET /api/v1/jobs?host= needs results.read).
ResultsReader = Annotated[User, Depends(page_require(Permission.RESULTS_READ))]
LATEST_JOBS = 50
TABS = ("console", "files", "processes")
# Where the confirmation of a move or a revocation is readable: the Host pages.
NOTICE_PATH = "/hosts"


async def open_session(platform: Platform, user: User, host_id: str) -> LiveSessionView | None:
    """The user's own open session on the host: a session is one person's console."""
    for session in await platform.live_sessions.find(user_id=user.id):
        if session.host_id == host_id:
            return session
    return None


def _job_rows(
    host: HostView, jobs: list[JobView], user: User, session: LiveSessionView | None
) -> dict[str, Any]:
    """What the jobs table's rows need, with the address of the next poll while a shown job has
    not ended or the user's live session is open (its console adds jobs without a reload)."""
    poll = None
    if unfinished(jobs) or session is not None:
        poll = f"/hosts/{host.id}/jobs?{urlencode({SEEN: digest(jobs)})}"
    return {
        "jobs": jobs,
        "final": FINAL_STATES,
        "responder": Permission.ACTIVE_RESPONSE in user.permissions,
        "poll": poll,
    }


async def render_host(
    request: Request,
    platform: Platform,
    user: User,
    host: HostView,
    *,
    status: int = 200,
    tab: str = "console",
    error: str | None = None,
    notice: str | None = None,
    admin_error: str | None = None,
    admin_notice: str | None = None,
    confirm_revoke: bool = False,
    **panel: Any,
) -> Response:
    """The Host page with the live session panel on `tab`; `panel` holds that tab's data. For
    admins, the administration section (host_admin.py) with its own refusal or confirmation."""
    reads_results = Permission.RESULTS_READ in user.permissions
    jobs = await platform.jobs.find(host_id=host.id, limit=LATEST_JOBS) if reads_results else []
    responder = Permission.ACTIVE_RESPONSE in user.permissions
    session = await open_session(platform, user, host.id) if responder else None
    manager = Permission.HOSTS_MANAGE in user.permissions
    segments = [s.name for s in await platform.segments.list()] if manager else []
    # The library's archives the administration section offers as agent bundles.
    uploads = await platform.files.find(kind="upload", name=".tar.gz", limit=20) if manager else []
    bundles = [(f.sha256, f"{f.name} ({f.sha256[:12]})") for f in uploads]
    return render(
        request,
        "host.html",
        status,
        h=host,
        reads_results=reads_results,
        **_job_rows(host, jobs, user, session),
        session=session,
        tab=tab,
        tabs=TABS,
        error=error,
        notice=notice,
        panel=panel,
        manager=manager,
        segments=segments,
        bundles=bundles,
        admin_error=admin_error,
        admin_notice=admin_notice,
        confirm_revoke=confirm_revoke,
    )


@router.get("/hosts/{ref}")
async def host_page(ref: str, request: Request, platform: PlatformDep, user: Reader) -> Response:
    host = await platform.hosts.get(ref)
    # The confirmation a move or a revocation left (post/redirect/get), shown once.
    response = await render_host(request, platform, user, host, admin_notice=read_notice(request))
    forget_notice(request, response, path=NOTICE_PATH)
    return response


@router.get("/hosts/{ref}/jobs")
async def host_jobs(
    ref: str, request: Request, platform: PlatformDep, user: ResultsReader
) -> Response:
    """The jobs table's rows alone (the whole tbody), polled while one has not ended or a live
    session is open: an empty 204 when they are the ones the page shows, else the rows with the
    next poll or, once every shown job has ended and no session is open, without one."""
    host = await platform.hosts.get(ref)
    jobs = await platform.jobs.find(host_id=host.id, limit=LATEST_JOBS)
    if unchanged(request, jobs):
        return Response(status_code=204)
    responder = Permission.ACTIVE_RESPONSE in user.permissions
    session = await open_session(platform, user, host.id) if responder else None
    rows = _job_rows(host, jobs, user, session)
    return render(request, "host_jobs_rows.html", h=host, **rows)
