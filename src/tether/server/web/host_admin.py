"""The Host page's administration: move the host to another segment, revoke it.

The admins' operations of `tether host move|revoke`, with the API's permission (hosts.manage)
and its services: `Segments.move_host` audits the move and tells a connected agent its new
segment's Active Response switch; `Hosts.revoke` audits, refuses the certificate from then on
and closes the live connection. Revoking cannot be undone, so the first POST only asks again on
the page (no script dialog under the CSP) and the second, with `confirm=yes`, revokes.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import PlatformError
from tether.server.services.hosts import HostView
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.host import NOTICE_PATH, render_host
from tether.server.web.notice import done
from tether.server.web.settings.common import form_fields

router = APIRouter()
HostAdmin = Annotated[User, Depends(page_require(Permission.HOSTS_MANAGE))]


async def _refused(
    request: Request, platform: Platform, user: User, host: HostView, refusal: PlatformError
) -> Response:
    """The Host page again with the service's sentence; nothing changed."""
    return await render_host(
        request, platform, user, host, status=refusal.status_code, admin_error=str(refusal)
    )


def _on_off(enabled: bool) -> str:
    return "on" if enabled else "off"


@router.post("/hosts/{ref}/move")
async def move(ref: str, request: Request, platform: PlatformDep, user: HostAdmin) -> Response:
    host = await platform.hosts.get(ref)
    try:
        segment = (await form_fields(request)).get("segment", "")
        before, after = await platform.segments.move_host(
            host.id, segment, actor=user.username, source=source_of(request)
        )
    except PlatformError as e:
        return await _refused(request, platform, user, host, e)
    if before == after:
        sentence = f"{host.hostname} is already in segment {after}."
    else:
        switch = {s.name: s.active_response for s in await platform.segments.list()}
        told = "its agent was told at once" if host.online else "its agent learns it on connecting"
        sentence = (
            f"{host.hostname} moved from segment {before} to {after}, where Active Response is "
            f"{_on_off(switch.get(after, False))}; {told}."
        )
    return done(f"/hosts/{host.id}", sentence, path=NOTICE_PATH)


@router.post("/hosts/{ref}/revoke")
async def revoke(ref: str, request: Request, platform: PlatformDep, user: HostAdmin) -> Response:
    host = await platform.hosts.get(ref)
    try:
        confirmed = (await form_fields(request)).get("confirm") == "yes"
    except PlatformError as e:
        return await _refused(request, platform, user, host, e)
    if not confirmed and not host.revoked:
        # Nothing changes yet: the page asks again, with the button that does it. (A revoked
        # host is the service's to refuse, in its words.)
        return await render_host(request, platform, user, host, confirm_revoke=True)
    try:
        revoked = await platform.hosts.revoke(host.id, actor=user.actor, source=source_of(request))
    except PlatformError as e:
        return await _refused(request, platform, user, host, e)
    closed = "its connection was closed" if host.online else "it was not connected"
    sentence = f"{revoked.hostname} revoked: its certificate is refused from now on; {closed}."
    return done(f"/hosts/{host.id}", sentence, path=NOTICE_PATH)
