"""Live response sessions: start one on a host, send its commands, list, show and stop them.

Each command answers with its job; the client follows the job's output with
`GET /jobs/{id}/output?after=&wait=` like any other. `tether shell` and the web console both sit
on these routes (docs/adr/0012).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, require, source_of
from tether.server.api.job_schemas import JobOut
from tether.server.api.live_session_schemas import (
    LiveCommand,
    LiveSessionOut,
    LiveSessionStart,
)
from tether.server.errors import Forbidden
from tether.server.services.access import user_refusal
from tether.server.services.live_sessions import LiveSessionView
from tether.server.services.platform import Platform
from tether.server.services.users import User

router = APIRouter(tags=["live sessions"])

_active_response = require(Permission.ACTIVE_RESPONSE)


async def _responder(user: Annotated[User, Depends(_active_response)]) -> User:
    """The Active Response role with a session that passed the second factor."""
    refusal = user_refusal(user)
    if refusal is not None:
        raise Forbidden(refusal)
    return user


Responder = Annotated[User, Depends(_responder)]


def _out(view: LiveSessionView, platform: Platform) -> LiveSessionOut:
    idle = platform.live_sessions.idle
    return LiveSessionOut(
        id=view.id,
        host_id=view.host_id,
        hostname=view.hostname,
        user=view.actor,
        started_at=view.started_at,
        last_activity_at=view.last_activity_at,
        ended_at=view.ended_at,
        end_reason=view.end_reason,
        cwd=view.cwd,
        commands=view.commands,
        open=view.open,
        idle_expires_at=view.last_activity_at + idle if view.open else None,
    )


@router.post("/sessions", response_model=LiveSessionOut, status_code=201)
async def start_session(
    body: LiveSessionStart, request: Request, platform: PlatformDep, user: Responder
) -> LiveSessionOut:
    """Open a live response session on a host: needs what a response action there needs."""
    host = await platform.hosts.get(body.host)
    view = await platform.live_sessions.start(user, host.id, source=source_of(request))
    return _out(view, platform)


@router.get("/sessions", response_model=list[LiveSessionOut])
async def list_sessions(
    platform: PlatformDep, _user: Responder, all: bool = False
) -> list[LiveSessionOut]:
    """Every user's open sessions, newest first; with `all=true`, ended ones too.

    Responders see everyone's: they read the same facts in the audit log anyway."""
    views = await platform.live_sessions.find(include_ended=all)
    return [_out(v, platform) for v in views]


@router.get("/sessions/{session_id}", response_model=LiveSessionOut)
async def get_session(session_id: str, platform: PlatformDep, _user: Responder) -> LiveSessionOut:
    return _out(await platform.live_sessions.get(session_id), platform)


@router.post("/sessions/{session_id}/commands", response_model=JobOut, status_code=201)
async def send_command(
    session_id: str, body: LiveCommand, request: Request, platform: PlatformDep, user: Responder
) -> JobOut:
    """Run one command in the caller's own open session; answers with its job."""
    args = body.args
    if body.script is not None:
        chosen = body.script
        args = await platform.scripts.run_args(user, body.action, chosen.name, chosen.version, args)
    job = await platform.live_sessions.command(
        session_id,
        user,
        body.action,
        args,
        source=source_of(request),
        cwd=body.cwd,
        timeout_seconds=body.timeout_seconds,
        from_library=body.script is not None,
    )
    return JobOut.of(job)


@router.delete("/sessions/{session_id}", response_model=LiveSessionOut)
async def stop_session(
    session_id: str, request: Request, platform: PlatformDep, user: Responder
) -> LiveSessionOut:
    """End the caller's own session; commands still running in it are cancelled."""
    view = await platform.live_sessions.stop(
        session_id, user, "stopped by the user", source=source_of(request)
    )
    return _out(view, platform)
