"""The Host page's live session: start and end it, and the console's two routes.

The console's JavaScript (static/console.js) calls thin routes here, not the REST API: they sit
behind the page's session cookie and CSRF check like every other page, and call the same
`LiveSessions` service as `POST /api/v1/sessions/...` does (docs/adr/0022). A line typed in the
console is read by `tether.protocol.shell`, exactly as `tether shell` reads it.
"""

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from tether.protocol import FINAL_STATES, Permission
from tether.protocol.shell import (
    ShellInputError,
    help_text,
    read_line,
    said_why_it_failed,
    script_command,
)
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Conflict, NotFound, PlatformError
from tether.server.services.hosts import HostView
from tether.server.services.jobs import JobView
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.console_text import result_text
from tether.server.web.host import open_session, render_host

router = APIRouter()
Responder = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE))]
# How long the console's long poll may hold one answer (the API allows 30 s).
FOLLOW_WAIT_SECONDS = 20.0
# Commands the web console leaves to the Files tab: they move files between this browser's
# computer and the platform, which a page does with its own forms.
NOT_IN_CONSOLE = {
    "put": "Deploy files from the Files tab; the console cannot read files on your computer.",
}
NO_SESSION = "Start a live session on this host first."
GET_TO_LOCAL = (
    "The web console keeps retrieved files in the Files library; use get PATH and download "
    "the file from there."
)
HELP = help_text(
    omit=frozenset(NOT_IN_CONSOLE),
    extra=("End the session with the End session button; it also ends after a quiet spell.",),
)
MAX_LINE = 8192
# Output ids are database integers: a larger cursor would overflow the query, not find nothing.
MAX_CURSOR = 2**62


@dataclass(frozen=True)
class Accepted:
    """A console line the platform accepted: its job, and what the console does after it."""

    job_id: str
    show: bool
    show_result: bool
    cd_to: str | None


async def wait_for(platform: Platform, job_id: str, seconds: float) -> JobView:
    """The job once it finished, or as it is after `seconds`."""
    deadline = time.monotonic() + seconds
    cursor = 0
    while True:
        job, pieces = await platform.jobs.follow(
            job_id, after=cursor, wait=max(0.0, deadline - time.monotonic())
        )
        cursor = pieces[-1].id if pieces else cursor
        if job.state in FINAL_STATES or time.monotonic() >= deadline:
            return job


async def send(
    platform: Platform,
    request: Request,
    user: User,
    host: HostView,
    action: str,
    args: dict[str, Any],
    *,
    cwd: str | None = None,
    from_library: bool = False,
) -> JobView:
    """One command in the user's open session on the host (refused without one)."""
    session = await open_session(platform, user, host.id)
    if session is None:
        raise Conflict(NO_SESSION)
    return await platform.live_sessions.command(
        session.id,
        user,
        action,
        args,
        source=source_of(request),
        cwd=cwd,
        from_library=from_library,
    )


def tab_url(host: HostView, tab: str, **query: str) -> str:
    """A live-session tab of the host's page (`files`, `processes`), with its non-empty query."""
    kept = {k: v for k, v in query.items() if v}
    return f"/hosts/{host.id}/session/{tab}" + (f"?{urlencode(kept)}" if kept else "")


async def session_job(
    platform: Platform, host: HostView, job_id: str, actions: frozenset[str]
) -> JobView | None:
    """The job a tab's URL names, only when it is one of this host's with one of `actions`: a
    URL naming another host's job shows nothing of it."""
    if not job_id:
        return None
    try:
        job = await platform.jobs.get(job_id)
    except NotFound:
        return None
    if job.host_id != host.id or job.action not in actions:
        return None
    return job


@router.post("/hosts/{ref}/session")
async def start_session(
    ref: str, request: Request, platform: PlatformDep, user: Responder
) -> Response:
    """Open a live session; the service decides whether this user may, here, now."""
    host = await platform.hosts.get(ref)
    try:
        await platform.live_sessions.start(user, host.id, source=source_of(request))
    except PlatformError as e:
        return await render_host(request, platform, user, host, status=e.status_code, error=str(e))
    return RedirectResponse(f"/hosts/{host.id}", status_code=303)


@router.post("/hosts/{ref}/session/end")
async def end_session(
    ref: str, request: Request, platform: PlatformDep, user: Responder
) -> Response:
    host = await platform.hosts.get(ref)
    session = await open_session(platform, user, host.id)
    if session is not None:
        try:
            await platform.live_sessions.stop(session.id, user, source=source_of(request))
        except PlatformError as e:
            return await render_host(
                request, platform, user, host, status=e.status_code, error=str(e)
            )
    return RedirectResponse(f"/hosts/{host.id}", status_code=303)


def _refused(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@router.post("/hosts/{ref}/session/commands")
async def console_command(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Responder,
    line: Annotated[str, Form(max_length=MAX_LINE)] = "",
    cwd: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """One console line: the job it became, or one sentence why not (JSON for console.js)."""
    try:
        host = await platform.hosts.get(ref)
    except NotFound as e:
        return _refused(str(e), 404)
    windows = host.os_family == "windows"
    directory = cwd or ("C:\\" if windows else "/")
    name = line.strip().partition(" ")[0]
    try:
        step = read_line(line, directory, windows=windows)
    except ShellInputError as e:
        return _refused(f"{name}: {e}", 400)
    if step is None:
        return JSONResponse({"text": ""})
    if step.name == "help":
        return JSONResponse({"text": HELP})
    if step.name in NOT_IN_CONSOLE:
        return _refused(NOT_IN_CONSOLE[step.name], 400)
    if step.name == "get" and len(step.words) == 2:
        return _refused(GET_TO_LOCAL, 400)
    command = step.command
    try:
        if step.name == "run":
            command = script_command(step.words)
        if command is None:
            return _refused(f"{name!r} is not a shell command; 'help' lists them.", 400)
        args = command.args
        if command.script is not None:
            # A library script: its source comes from the library, so the run needs respond.
            args = await platform.scripts.run_args(
                user, command.action, command.script, None, command.args
            )
        job = await send(
            platform,
            request,
            user,
            host,
            command.action,
            args,
            cwd=directory,
            from_library=command.script is not None,
        )
    except PlatformError as e:
        return _refused(str(e), e.status_code)
    accepted = Accepted(job.id, step.show, step.show_result, step.cd_to)
    return JSONResponse(accepted.__dict__, status_code=201)


async def _said_why(platform: Platform, job: JobView) -> bool:
    """A failed `cat` or `py` that wrote its one sentence on stderr (read only for such a job;
    their output is small: a `cat` shows at most 64 KiB)."""
    if not said_why_it_failed(job.action, job.args, job.error):
        return False
    return any(p.stream == "stderr" for p in await platform.jobs.output(job.id, after=0))


@router.get("/hosts/{ref}/session/jobs/{job_id}/output")
async def console_output(
    ref: str,
    job_id: str,
    platform: PlatformDep,
    _user: Responder,
    after: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    wait: Annotated[float, Query(ge=0, le=FOLLOW_WAIT_SECONDS)] = FOLLOW_WAIT_SECONDS,
) -> Response:
    """A command's output after `after` (a long poll); the result as text once it finished."""
    try:
        host = await platform.hosts.get(ref)
        job = await platform.jobs.get(job_id)
    except NotFound as e:
        return _refused(str(e), 404)
    if job.host_id != host.id:
        return _refused(f"Job {job_id} did not run on this host.", 404)
    job, pieces = await platform.jobs.follow(job_id, after=after, wait=wait)
    done = job.state in FINAL_STATES and not pieces
    answer: dict[str, Any] = {
        "cursor": pieces[-1].id if pieces else after,
        "state": job.state,
        "done": done,
        "output": [
            # A result row a script emitted: one line of JSON each.
            {"stream": p.stream, "text": p.text or json.dumps(p.fields, ensure_ascii=False) + "\n"}
            for p in pieces
            if p.text or p.fields
        ],
    }
    if done:
        answer["error"] = (
            None if job.state == "succeeded" else f"{job.state}: {job.error or 'no reason given'}"
        )
        if job.state == "failed" and await _said_why(platform, job):
            # Its own sentence is already on the console: no second line for one failure.
            answer["error"] = None
        answer["result"] = result_text(job.result) if job.state == "succeeded" else ""
    return JSONResponse(answer)
