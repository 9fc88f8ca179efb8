"""The Settings pages' step-up prompt: a fresh second-factor code opens sensitive changes for
five minutes (docs/adr/0034).

Every Settings page shows the code field while the session's last check is older than the
window (`common.show`); a sensitive change made without it is refused with the service's
sentence and the page again, prompt included.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import PlatformError
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web.access import web_user
from tether.server.web.settings.common import TABS, done
from tether.server.web.templating import render

router = APIRouter()
PATH = "/settings/step-up"
ACCEPTED = "Code accepted: sensitive changes are open for 5 minutes."


async def fresh(request: Request, platform: Platform, user: User, what: str) -> None:
    """Refuse (StepUpRequired) a sensitive change from a page unless the session passed its
    second factor within the window; the page's prompt renews it."""
    await platform.step_up.require_fresh(user, None, what=what, source=source_of(request))


def _back(page: str) -> str:
    """Only back to a Settings page: a form field must not send the browser elsewhere."""
    return page if page in {t.path for t in TABS} else TABS[0].path


@router.post(PATH)
async def step_up(
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(web_user)],
    code: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    try:
        await platform.step_up.require_fresh(
            user, code[:16], what="settings page", source=source_of(request)
        )
    except PlatformError as e:
        return render(
            request, "message.html", e.status_code, heading="Code not accepted", message=str(e)
        )
    return done(_back(back), ACCEPTED)
