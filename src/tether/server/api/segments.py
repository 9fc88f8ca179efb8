"""Device segments: listed by anyone who can see hosts, changed by admins only."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from tether.protocol import Permission, approval_weakens
from tether.server.api.deps import PlatformDep, require, require_step_up, source_of
from tether.server.api.schemas import SegmentChange, SegmentCreate, SegmentOut
from tether.server.errors import Invalid
from tether.server.services.users import User

router = APIRouter(tags=["segments"])


@router.get("/segments", response_model=list[SegmentOut])
async def list_segments(
    platform: PlatformDep, _user: Annotated[User, Depends(require(Permission.HOSTS_READ))]
) -> list[SegmentOut]:
    return [SegmentOut.of(s) for s in await platform.segments.list()]


@router.post("/segments", response_model=SegmentOut, status_code=201)
async def create_segment(
    body: SegmentCreate,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.SEGMENTS_MANAGE))],
) -> SegmentOut:
    if body.active_response:
        await require_step_up(request, platform, user, "active response")
    created = await platform.segments.create(
        body.name,
        active_response=body.active_response,
        actor=user.username,
        source=source_of(request),
    )
    return SegmentOut.of(created)


@router.patch("/segments/{name}", response_model=SegmentOut)
async def change_segment(
    name: str,
    body: SegmentChange,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.SEGMENTS_MANAGE))],
) -> SegmentOut:
    """Rename the segment, switch its Active Response on or off, set its four-eyes approval."""
    approval_given = body.approval is not None or body.approval_timeout_seconds is not None
    if body.name is None and body.active_response is None and not approval_given:
        raise Invalid("Give a new name, an Active Response setting, an approval setting, or more.")
    if body.active_response:
        await require_step_up(request, platform, user, "active response")
    source = source_of(request)
    current = await platform.segments.get(name)
    if body.approval is not None and approval_weakens(body.approval, current.approval):
        # Fewer actions needing a second person is as sensitive as switching Active Response on.
        await require_step_up(request, platform, user, "four-eyes approval")
    if body.name is not None:
        current = await platform.segments.rename(
            name, body.name, actor=user.username, source=source
        )
    if body.active_response is not None:
        current = await platform.segments.set_active_response(
            current.name, body.active_response, actor=user.username, source=source
        )
    if approval_given:
        current = await platform.segments.set_approval(
            current.name,
            body.approval,
            body.approval_timeout_seconds,
            actor=user.username,
            source=source,
        )
    return SegmentOut.of(current)


@router.delete("/segments/{name}", status_code=204, response_class=Response)
async def delete_segment(
    name: str,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require(Permission.SEGMENTS_MANAGE))],
) -> Response:
    await platform.segments.delete(name, actor=user.username, source=source_of(request))
    return Response(status_code=204)
