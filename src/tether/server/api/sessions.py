"""Sessions: the caller's own (listed, the others ended) and, for admins, anyone's."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, UserDep, require, source_of
from tether.server.api.view_out import ViewOut
from tether.server.services.user_sessions import SessionInfo
from tether.server.services.users import User

router = APIRouter(tags=["sessions"])
Admin = Annotated[User, Depends(require(Permission.USERS_MANAGE))]


class SessionOut(ViewOut):
    id: str
    client: str
    source: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    mfa_verified: bool
    current: bool


def _out(found: list[SessionInfo]) -> list[SessionOut]:
    return [SessionOut.of(s) for s in found]


@router.get("/auth/sessions", response_model=list[SessionOut])
async def my_sessions(platform: PlatformDep, user: UserDep) -> list[SessionOut]:
    return _out(await platform.user_sessions.list(user.username, asking=user))


@router.delete("/auth/sessions/{session_id}", status_code=204, response_class=Response)
async def end_my_session(
    session_id: str, request: Request, platform: PlatformDep, user: UserDep
) -> Response:
    """End another of the caller's sessions (logout ends this one)."""
    await platform.user_sessions.end(user.username, session_id, by=user, source=source_of(request))
    return Response(status_code=204)


@router.get("/users/{username}/sessions", response_model=list[SessionOut])
async def user_sessions(username: str, platform: PlatformDep, user: Admin) -> list[SessionOut]:
    return _out(await platform.user_sessions.list(username, asking=user))


@router.delete("/users/{username}/sessions/{session_id}", status_code=204, response_class=Response)
async def end_user_session(
    username: str, session_id: str, request: Request, platform: PlatformDep, user: Admin
) -> Response:
    await platform.user_sessions.end(username, session_id, by=user, source=source_of(request))
    return Response(status_code=204)
