"""Isolation: isolate and release hosts, and the allowlist every isolation keeps open."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tether.protocol import Permission
from tether.protocol.isolation import AllowRule
from tether.server.api.deps import PlatformDep, require, source_of
from tether.server.api.isolation_schemas import AllowlistIn, IsolationRequest
from tether.server.api.job_schemas import BatchOut
from tether.server.api.jobs import batch_out, selection_of
from tether.server.services.users import User

router = APIRouter(tags=["isolation"])


@router.post("/isolation/isolate", response_model=BatchOut, status_code=201)
async def isolate(
    body: IsolationRequest,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_READ))],
) -> BatchOut:
    """Isolate the hosts; offline ones are `isolation pending` until they return.

    The service checks the Active Response role, the second factor and each host's segment.
    """
    batch = await platform.isolation.isolate(
        user,
        await selection_of(platform, body),
        body.mode,
        source=source_of(request),
        not_after=body.not_after,
        reason=body.reason,
    )
    return batch_out(batch)


@router.post("/isolation/release", response_model=BatchOut, status_code=201)
async def release(
    body: IsolationRequest,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_READ))],
) -> BatchOut:
    """Release the hosts from isolation; offline ones are `unisolation pending` meanwhile."""
    batch = await platform.isolation.release(
        user,
        await selection_of(platform, body),
        source=source_of(request),
        not_after=body.not_after,
        reason=body.reason,
    )
    return batch_out(batch)


@router.get("/isolation/allowlist", response_model=list[AllowRule])
async def get_allowlist(
    platform: PlatformDep, _user: Annotated[User, Depends(require(Permission.HOSTS_READ))]
) -> list[AllowRule]:
    """What every isolation keeps reachable besides the platform and loopback."""
    return await platform.isolation.allowlist()


@router.put("/isolation/allowlist", response_model=list[AllowRule])
async def put_allowlist(
    body: AllowlistIn,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.SETTINGS_MANAGE))],
) -> list[AllowRule]:
    """Replace the allowlist; isolated hosts re-apply their rules with it as soon as they hear."""
    return await platform.isolation.set_allowlist(
        body.rules, actor=user.actor, source=source_of(request)
    )
