"""Service tokens for automation: created (with step-up), listed and revoked by admins.

The token itself is in the creation's answer only; the platform keeps its SHA-256.
"""

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tether.protocol import Permission, Tier
from tether.server.api.deps import PlatformDep, require, require_fresh, source_of
from tether.server.api.view_out import ViewOut
from tether.server.services.service_tokens import ServiceTokenView
from tether.server.services.users import User

router = APIRouter(tags=["service tokens"])
Admin = Annotated[User, Depends(require(Permission.USERS_MANAGE))]
# Creating one hands out access to endpoints: a fresh second-factor check, as for roles.
FreshAdmin = Annotated[User, Depends(require_fresh(Permission.USERS_MANAGE, "service tokens"))]


class ServiceTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)]
    tier: Tier
    segments: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)]
    expires_in_seconds: Annotated[int, Field(ge=300, le=365 * 86400)]
    # Addresses or networks the token may call from; empty: anywhere.
    sources: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = []


class ServiceTokenOut(ViewOut):
    name: str
    tier: str
    segments: list[str]
    sources: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None
    last_used_from: str | None


class ServiceTokenIssued(ServiceTokenOut):
    # Shown this once: the platform keeps only its SHA-256.
    token: str


def _out(view: ServiceTokenView) -> ServiceTokenOut:
    return ServiceTokenOut.of(view)


@router.post("/service-tokens", response_model=ServiceTokenIssued, status_code=201)
async def create_service_token(
    body: ServiceTokenCreate, request: Request, platform: PlatformDep, user: FreshAdmin
) -> ServiceTokenIssued:
    """Create a token bound to a tier, segments, an expiry and source networks; shown once."""
    issued = await platform.service_tokens.create(
        body.name,
        body.tier,
        body.segments,
        timedelta(seconds=body.expires_in_seconds),
        body.sources,
        by=user,
        source=source_of(request),
    )
    return ServiceTokenIssued.of(issued.view, token=issued.token)


@router.get("/service-tokens", response_model=list[ServiceTokenOut])
async def list_service_tokens(platform: PlatformDep, _user: Admin) -> list[ServiceTokenOut]:
    """Every service token with its bounds and last use (never the token)."""
    return [_out(v) for v in await platform.service_tokens.list()]


@router.delete("/service-tokens/{name}", response_model=ServiceTokenOut)
async def revoke_service_token(
    name: str, request: Request, platform: PlatformDep, user: Admin
) -> ServiceTokenOut:
    """Revoke at once (no step-up: taking access away is never held up); its queued jobs are
    withdrawn."""
    view = await platform.service_tokens.revoke(name, by=user, source=source_of(request))
    return _out(view)
