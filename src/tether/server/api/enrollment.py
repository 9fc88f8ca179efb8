"""Enrollment tokens (admins) and the enrollment endpoint itself (public: the token is the key)."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from tether.protocol import EnrollRequest, EnrollResponse, Permission
from tether.server.api.deps import PlatformDep, require, require_fresh, source_of
from tether.server.api.schemas import TokenCreate, TokenCreated, TokenOut, TokenRevoke
from tether.server.services.users import User

public = APIRouter(tags=["enrollment"])
router = APIRouter(tags=["enrollment"])


@public.get("/enroll/ca", response_class=PlainTextResponse)
async def ca_certificate(platform: PlatformDep) -> str:
    """The platform CA in PEM; an endpoint checks it against the fingerprint in its token."""
    return platform.ca.pem.decode()


# Defaults left out: an agent from before the address list refuses an unknown field there.
@public.post("/enroll", response_model=EnrollResponse, response_model_exclude_defaults=True)
async def enroll(body: EnrollRequest, request: Request, platform: PlatformDep) -> EnrollResponse:
    return await platform.enrollment.enroll(body, source=source_of(request))


@router.post("/enrollment-tokens", response_model=TokenCreated, status_code=201)
async def create_token(
    body: TokenCreate,
    request: Request,
    platform: PlatformDep,
    user: Annotated[
        User, Depends(require_fresh(Permission.ENROLLMENT_MANAGE, "enrollment tokens"))
    ],
) -> TokenCreated:
    issued = await platform.enrollment.create_token(
        segment=body.segment,
        uses=body.uses,
        lifetime=timedelta(seconds=body.expires_in_seconds),
        actor=user.actor,
        source=source_of(request),
    )
    return TokenCreated(
        id=issued.id,
        token=issued.token,
        segment=issued.segment,
        uses=issued.max_uses,
        expires_at=issued.expires_at,
    )


@router.get("/enrollment-tokens", response_model=list[TokenOut])
async def list_tokens(
    platform: PlatformDep,
    _user: Annotated[User, Depends(require(Permission.ENROLLMENT_MANAGE))],
) -> list[TokenOut]:
    return [TokenOut.of(t) for t in await platform.enrollment.list_tokens()]


@router.post("/enrollment-tokens/revoke", response_model=TokenOut)
async def revoke_token(
    body: TokenRevoke,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.ENROLLMENT_MANAGE))],
) -> TokenOut:
    """Stop a token enrolling anything more, at once (no step-up: taking access away is never
    held up); hosts it already enrolled stay enrolled."""
    revoked = await platform.enrollment.revoke_token(
        body.token, actor=user.actor, source=source_of(request)
    )
    return TokenOut.of(revoked)
