"""The host inventory, revocation, moves between segments, response access, reachability."""

import statistics
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, require, source_of
from tether.server.api.schemas import (
    HostMove,
    HostOut,
    PingOut,
    PingRequest,
    ResponseAccessOut,
)
from tether.server.services.users import User

router = APIRouter(tags=["hosts"])


@router.get("/hosts", response_model=list[HostOut])
async def list_hosts(
    platform: PlatformDep, _user: Annotated[User, Depends(require(Permission.HOSTS_READ))]
) -> list[HostOut]:
    return [HostOut.of(h) for h in await platform.hosts.list()]


@router.get("/hosts/{ref}", response_model=HostOut)
async def get_host(
    ref: str,
    platform: PlatformDep,
    _user: Annotated[User, Depends(require(Permission.HOSTS_READ))],
) -> HostOut:
    return HostOut.of(await platform.hosts.get(ref))


@router.post("/hosts/{ref}/revoke", response_model=HostOut)
async def revoke_host(
    ref: str,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_MANAGE))],
) -> HostOut:
    host = await platform.hosts.revoke(ref, actor=user.actor, source=source_of(request))
    return HostOut.of(host)


@router.post("/hosts/{ref}/move", response_model=HostOut)
async def move_host(
    ref: str,
    body: HostMove,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_MANAGE))],
) -> HostOut:
    """Put the host into another segment; its agent is told the new segment's switch at once."""
    host = await platform.hosts.get(ref)
    await platform.segments.move_host(
        host.id, body.segment, actor=user.username, source=source_of(request)
    )
    return HostOut.of(await platform.hosts.get(host.id))


@router.get("/hosts/{ref}/response-access", response_model=ResponseAccessOut)
async def response_access(
    ref: str,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_READ))],
) -> ResponseAccessOut:
    """Whether the caller may run response actions on the host now; 403 with the reason if not."""
    host = await platform.hosts.get(ref)
    await platform.access.authorize_response(user, host.id)
    return ResponseAccessOut(allowed=True)


@router.post("/hosts/ping", response_model=PingOut)
async def ping_hosts(
    body: PingRequest,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.HOSTS_MANAGE))],
) -> PingOut:
    """Round trip to each named host (all online hosts when none are named)."""
    ids = None
    if body.hosts is not None:
        ids = [await platform.hosts.resolve(ref) for ref in body.hosts]
    report = await platform.reachability.ping(
        ids, timeout=body.timeout_seconds, actor=user.actor, source=source_of(request)
    )
    trips = report.round_trips_ms
    return PingOut(
        asked=report.asked,
        answered=report.answered,
        failed=report.failed,
        seconds=report.seconds,
        round_trip_ms_p50=statistics.median(trips) if trips else None,
        round_trip_ms_max=max(trips) if trips else None,
        round_trip_ms=report.round_trip_ms_by_host,
    )
