"""Settings -> Device Segments: segments with their host counts, creating and deleting them, and
the Active Response switch of each (also shown on Device Configuration, which posts here).

The `Segments` service does the checking and the auditing, as for `tether.server.api.segments`;
deleting a segment that still holds hosts is its refusal, shown as it words it.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import Approval, Permission, approval_weakens
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid, PlatformError
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.settings.common import changes_on, done, form_fields, show
from tether.server.web.settings.step_up import fresh

router = APIRouter()
SegmentAdmin = Annotated[User, Depends(page_require(Permission.SEGMENTS_MANAGE))]
PAGE = "/settings/segments"
# Where a switch sends the browser back to: the page it was flipped on.
SWITCH_PAGES = {"segments": PAGE, "configuration": "/settings/configuration"}


def _on_off(enabled: bool) -> str:
    return "on" if enabled else "off"


async def _page(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int = 200,
    error: str | None = None,
    entered: dict[str, str] | None = None,
) -> Response:
    return show(
        request,
        "settings/segments.html",
        user,
        status_code,
        error=error,
        segments=await platform.segments.list(),
        switch_back="segments",
        entered=entered or {},
    )


_change = changes_on(PAGE, _page)


@router.get(PAGE)
async def segments_page(request: Request, platform: PlatformDep, user: SegmentAdmin) -> Response:
    return await _page(request, platform, user)


@router.post(PAGE)
async def create_segment(request: Request, platform: PlatformDep, user: SegmentAdmin) -> Response:
    typed = (await request.form()).get("name")

    async def create() -> str:
        fields = await form_fields(request)
        if fields.get("active_response") == "on":
            await fresh(request, platform, user, "active response")
        created = await platform.segments.create(
            fields.get("name", ""),
            active_response=fields.get("active_response") == "on",
            actor=user.username,
            source=source_of(request),
        )
        return (
            f"Segment {created.name} created, Active Response {_on_off(created.active_response)}."
        )

    entered = {"name": typed[:64] if isinstance(typed, str) else ""}
    return await _change(request, platform, user, create, entered)


@router.post(PAGE + "/{name}/delete")
async def delete_segment(
    name: str, request: Request, platform: PlatformDep, user: SegmentAdmin
) -> Response:
    async def delete() -> str:
        await platform.segments.delete(name, actor=user.username, source=source_of(request))
        return f"Segment {name} deleted, with its enrollment tokens."

    return await _change(request, platform, user, delete)


@router.post(PAGE + "/{name}/active-response")
async def switch_active_response(
    name: str, request: Request, platform: PlatformDep, user: SegmentAdmin
) -> Response:
    """Turn the segment's Active Response on (`enabled=on`) or off; back to the page it was on."""
    try:
        fields = await form_fields(request)
        if fields.get("enabled") == "on":
            await fresh(request, platform, user, "active response")
        changed = await platform.segments.set_active_response(
            name, fields.get("enabled") == "on", actor=user.username, source=source_of(request)
        )
    except PlatformError as e:
        # Shown here whichever page the switch was on: this page is the segments' own.
        return await _page(request, platform, user, e.status_code, str(e))
    back = SWITCH_PAGES.get(fields.get("back", ""), PAGE)
    return done(back, f"Active Response is {_on_off(changed.active_response)} for {changed.name}.")


@router.post(PAGE + "/{name}/approval")
async def set_approval(
    name: str, request: Request, platform: PlatformDep, user: SegmentAdmin
) -> Response:
    """Set which actions of the segment need a second person's approval, and how long a request
    waits; fewer actions waiting asks for a fresh code, as in the API."""

    async def change() -> str:
        fields = await form_fields(request)
        try:
            approval = Approval(fields.get("approval", ""))
            hours = int(fields.get("timeout_hours", "24"))
        except ValueError:
            raise Invalid(
                "Choose off, script or respond, and a timeout in whole hours (1 to 168)."
            ) from None
        current = await platform.segments.get(name)
        if approval_weakens(approval, current.approval):
            await fresh(request, platform, user, "four-eyes approval")
        changed = await platform.segments.set_approval(
            name, approval, hours * 3600, actor=user.username, source=source_of(request)
        )
        return f"Approval for {changed.name} is {changed.approval} (within {hours} h)."

    return await _change(request, platform, user, change)
