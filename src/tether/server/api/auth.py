"""Login, logout and the caller's identity."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tether.server.api.deps import PlatformDep, UserDep, bearer_token, source_of
from tether.server.api.schemas import LoginRequest, LoginResponse, WhoAmI

public = APIRouter(tags=["auth"])
router = APIRouter(tags=["auth"])


@public.post("/auth/login", response_model=LoginResponse)
async def login(body: LoginRequest, request: Request, platform: PlatformDep) -> LoginResponse:
    session = await platform.users.login(
        body.username, body.password, source=source_of(request), client=body.client
    )
    return LoginResponse(
        token=session.token,
        username=session.user.username,
        roles=sorted(session.user.roles),
        expires_at=session.expires_at,
    )


@router.post("/auth/logout", status_code=204)
async def logout(
    request: Request,
    user: UserDep,
    platform: PlatformDep,
    token: Annotated[str, Depends(bearer_token)],
) -> None:
    await platform.users.logout(token, user, source=source_of(request))


@router.get("/auth/whoami", response_model=WhoAmI)
async def whoami(user: UserDep) -> WhoAmI:
    return WhoAmI(
        username=user.username,
        roles=sorted(user.roles),
        permissions=sorted(p.value for p in user.permissions),
    )
