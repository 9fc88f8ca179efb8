"""The Host page's Processes tab: the endpoint's process list (processes.list) with a Kill
button per row, confirmed on a page of its own (no JavaScript dialog) before processes.kill.

Like the Files tab, each listing is a command of the user's live session; the POST waits briefly
and redirects to the page showing that job's result.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import Permission
from tether.protocol.action_names import PROCESSES_KILL, PROCESSES_LIST
from tether.server.api.deps import PlatformDep
from tether.server.errors import PlatformError
from tether.server.services.hosts import HostView
from tether.server.services.jobs import JobView
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.host import render_host
from tether.server.web.live_session import send, session_job, tab_url, wait_for
from tether.server.web.numbers import whole_number

router = APIRouter()
Responder = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE))]
LIST_WAIT_SECONDS = 20.0
# A kill answers within the action's own 30 s limit; the page waits that long for the outcome.
KILL_WAIT_SECONDS = 30.0
# The jobs a Processes tab URL may name.
ACTIONS = frozenset({PROCESSES_LIST, PROCESSES_KILL})
NOT_A_PID = "A process id is a whole number greater than 0."
JobField = Annotated[str, Form(max_length=64)]


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
    confirm: dict[str, str] | None = None,
    ended: frozenset[int] = frozenset(),
) -> Response:
    job = await session_job(platform, host, job_id, ACTIONS)
    listing = job if job is not None and job.action == PROCESSES_LIST else None
    return await render_host(
        request,
        platform,
        user,
        host,
        status=status,
        tab="processes",
        error=error,
        notice=notice,
        listing=listing,
        confirm=confirm,
        ended=ended,
    )


@router.get("/hosts/{ref}/session/processes")
async def processes_page(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    job: str = "",
    killed: str = "",
) -> Response:
    host = await platform.hosts.get(ref)
    notice = None
    ended: frozenset[int] = frozenset()
    if killed:
        outcome = await session_job(platform, host, killed[:64], ACTIONS)
        if outcome is not None and outcome.action == PROCESSES_KILL:
            notice = _kill_notice(outcome)
            ended = _ended_pids(outcome)
    return await _show(request, platform, user, host, job[:64], notice=notice, ended=ended)


def _ended_pids(job: JobView) -> frozenset[int]:
    """The processes a kill ended: the listing shown beside it drops them, so the responder
    need not list again to see that the process is gone."""
    if job.state != "succeeded" or not isinstance(job.result, dict):
        return frozenset()
    reported = job.result.get("processes")
    if not isinstance(reported, list):
        return frozenset()
    return frozenset(
        entry["pid"]
        for entry in reported
        if isinstance(entry, dict)
        and isinstance(entry.get("pid"), int)
        and entry.get("outcome") in ("killed", "gone")
    )


def _kill_notice(job: JobView) -> str:
    pid = (job.args or {}).get("pid")
    if job.state != "succeeded":
        return f"Killing process {pid}: {job.state} ({job.error or 'no reason given'})."
    killed = (job.result or {}).get("processes") or (job.result or {})
    return f"Kill of process {pid} finished: {_outcome_words(killed)}."


def _outcome_words(result: object) -> str:
    if isinstance(result, list):
        return ", ".join(
            f"{r.get('pid')} {r.get('outcome')}" for r in result if isinstance(r, dict)
        )
    if isinstance(result, dict):
        return ", ".join(f"{k}: {v}" for k, v in result.items())
    return str(result)


@router.post("/hosts/{ref}/session/processes")
async def list_processes(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    name: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """List the endpoint's processes, those whose name contains `name` when it is given."""
    host = await platform.hosts.get(ref)
    args = {"name": name.strip()} if name.strip() else {}
    try:
        job = await send(platform, request, user, host, PROCESSES_LIST, args)
    except PlatformError as e:
        return await _show(request, platform, user, host, status=e.status_code, error=str(e))
    await wait_for(platform, job.id, LIST_WAIT_SECONDS)
    return RedirectResponse(tab_url(host, "processes", job=job.id), status_code=303)


@router.post("/hosts/{ref}/session/processes/kill")
async def kill_process(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    pid: Annotated[str, Form(max_length=12)] = "",
    name: Annotated[str, Form(max_length=1024)] = "",
    listing: JobField = "",
    confirmed: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """First ask (a confirmation on the page), then kill: processes.kill in the session."""
    host = await platform.hosts.get(ref)
    number = whole_number(pid)
    if number is None or number <= 0:
        return await _show(request, platform, user, host, listing, status=400, error=NOT_A_PID)
    if confirmed != "yes":
        confirm = {"pid": pid, "name": name, "listing": listing}
        return await _show(request, platform, user, host, listing, confirm=confirm)
    try:
        job = await send(platform, request, user, host, PROCESSES_KILL, {"pid": number})
    except PlatformError as e:
        return await _show(
            request, platform, user, host, listing, status=e.status_code, error=str(e)
        )
    await wait_for(platform, job.id, KILL_WAIT_SECONDS)
    return RedirectResponse(tab_url(host, "processes", job=listing, killed=job.id), status_code=303)
