"""The Sessions page: your open sessions, each but this one with an End button; admins open
anyone's with ?user=NAME (the Team page links there). Same service as the API's /sessions."""

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import PlatformError
from tether.server.web.access import PageForbidden, WebUserDep
from tether.server.web.templating import render

router = APIRouter()
PAGE = "/sessions"


def _whose(user_permissions: frozenset[Permission], me: str, wanted: str | None) -> str:
    if wanted and wanted != me:
        if Permission.USERS_MANAGE not in user_permissions:
            raise PageForbidden("Only admins can see another user's sessions.")
        return wanted
    return me


@router.get(PAGE)
async def sessions_page(
    request: Request,
    platform: PlatformDep,
    user: WebUserDep,
    whose: Annotated[str | None, Query(alias="user", max_length=64)] = None,
) -> Response:
    username = _whose(user.permissions, user.username, whose)
    found = await platform.user_sessions.list(username, asking=user)
    return render(request, "sessions.html", username=username, sessions=found, error=None)


@router.post(PAGE + "/{session_id}/end")
async def end_session(
    session_id: str,
    request: Request,
    platform: PlatformDep,
    user: WebUserDep,
    username: Annotated[str, Form()] = "",
) -> Response:
    whose = _whose(user.permissions, user.username, username or None)
    try:
        await platform.user_sessions.end(whose, session_id, by=user, source=source_of(request))
    except PlatformError as e:
        found = await platform.user_sessions.list(whose, asking=user)
        return render(
            request,
            "sessions.html",
            e.status_code,
            username=whose,
            sessions=found,
            error=str(e),
        )
    query = f"?user={quote(whose, safe='')}" if whose != user.username else ""
    return RedirectResponse(PAGE + query, status_code=303)
