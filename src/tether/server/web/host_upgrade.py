"""The Host page's "Upgrade the agent" form: `tether agent upgrade --hosts HOST` from a browser.

The bundle archive is a file of the library (uploaded on the Files page or with `tether files
upload`, made with `tether agent upgrade-bundle`); the form names it and, when the session's
second factor is older than five minutes, takes a fresh code (step-up). The service decides the
rest as it does for the API: admin and the script tier, a person, a bundle archive, then it
signs, records and sends (docs/adr/0051).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid, PlatformError
from tether.server.services.jobs import Selection
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.host import NOTICE_PATH, render_host
from tether.server.web.notice import done
from tether.server.web.settings.common import form_fields

router = APIRouter()
HostAdmin = Annotated[User, Depends(page_require(Permission.HOSTS_MANAGE))]


@router.post("/hosts/{ref}/upgrade")
async def upgrade(ref: str, request: Request, platform: PlatformDep, user: HostAdmin) -> Response:
    host = await platform.hosts.get(ref)
    try:
        fields = await form_fields(request)
        sha256 = fields.get("sha256", "").strip().lower()
        if not sha256:
            raise Invalid(
                "Choose an agent bundle: upload the archive 'tether agent upgrade-bundle' "
                "wrote on the Files page first."
            )
        code = fields.get("code", "").strip()[:16] or None
        await platform.step_up.require_fresh(
            user, code, what="upgrading agents", source=source_of(request)
        )
        rollout = await platform.upgrades.start(
            user,
            sha256=sha256,
            selection=Selection(host_ids=[host.id]),
            max_parallel=1,
            source=source_of(request),
        )
    except PlatformError as e:
        return await render_host(
            request, platform, user, host, status=e.status_code, admin_error=str(e)
        )
    sentence = (
        f"Upgrade of {host.hostname} to version {rollout.version} sent (upgrade {rollout.id}); "
        "its job below ends upgraded, rolled back or refused."
    )
    return done(f"/hosts/{host.id}", sentence, path=NOTICE_PATH)
