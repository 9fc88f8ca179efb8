"""What the Settings pages share: their tabs, reading a form, and the confirmation line
(post/redirect/get with the sentence in a cookie, `tether.server.web.notice`)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response

from tether.protocol import Permission
from tether.server.errors import Invalid, PlatformError
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web import notice
from tether.server.web.templating import render

NOTICE_PATH = "/settings"
# Longer than any single-line field these pages take (the API allows passwords this long).
FIELD_LIMIT = 1024


@dataclass(frozen=True)
class Tab:
    path: str
    label: str
    permission: Permission


TABS = (
    Tab("/settings/team", "Team", Permission.USERS_MANAGE),
    Tab("/settings/segments", "Device Segments", Permission.SEGMENTS_MANAGE),
    Tab("/settings/configuration", "Device Configuration", Permission.SETTINGS_MANAGE),
    Tab("/settings/enrollment", "Enrollment tokens", Permission.ENROLLMENT_MANAGE),
    # The API's permission for them (`api/service_tokens.py`): they hand out endpoint access.
    Tab("/settings/service-tokens", "Service tokens", Permission.USERS_MANAGE),
)


def tabs_for(user: User) -> list[Tab]:
    """The Settings pages this user may open, for the tab bar."""
    return [t for t in TABS if t.permission in user.permissions]


async def form_fields(request: Request, limit: int = FIELD_LIMIT) -> dict[str, str]:
    """The submitted form's text fields (the first value of each); a field longer than `limit`
    is refused rather than cut, so nothing is saved other than what was typed."""
    form = await request.form()
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or name in fields:
            continue
        if len(value) > limit:
            raise Invalid(f"Each field holds at most {limit} characters.")
        fields[name] = value
    return fields


async def form_values(request: Request, name: str) -> list[str]:
    """Every value of a repeated field (ticked checkboxes)."""
    form = await request.form()
    return [v[:FIELD_LIMIT] for v in form.getlist(name) if isinstance(v, str)]


def done(url: str, sentence: str) -> Response:
    """Redirect to `url`, which then shows `sentence` once as its confirmation line."""
    return notice.done(url, sentence, path=NOTICE_PATH)


# A Settings page's renderer: (request, platform, user, status, refusal, what was typed).
PageRenderer = Callable[[Request, Platform, User, int, str | None, Any], Awaitable[Response]]


class Change(Protocol):
    def __call__(
        self,
        request: Request,
        platform: Platform,
        user: User,
        work: Callable[[], Awaitable[str]],
        entered: Any = None,
    ) -> Awaitable[Response]: ...


def changes_on(page: str, render: PageRenderer) -> Change:
    """How a Settings page takes a change: run it (it returns its confirmation) and redirect to
    `page` to show that; when a service refuses, the page again with the sentence and with
    what the form held, so nothing typed is lost."""

    async def change(
        request: Request,
        platform: Platform,
        user: User,
        work: Callable[[], Awaitable[str]],
        entered: Any = None,
    ) -> Response:
        try:
            sentence = await work()
        except PlatformError as e:
            return await render(request, platform, user, e.status_code, str(e), entered)
        return done(page, sentence)

    return change


def show(
    request: Request,
    template: str,
    user: User,
    status_code: int = 200,
    *,
    error: str | None = None,
    **context: Any,
) -> Response:
    """Render a Settings page with its tabs, and the confirmation a redirect left for it (shown
    once: the cookie is deleted with this answer) or the refusal `error`."""
    confirmation = notice.read_notice(request)
    platform: Platform = request.app.state.platform
    response = render(
        request,
        template,
        status_code,
        tabs=tabs_for(user),
        # Sensitive changes need a fresh second-factor check: the layout shows the prompt.
        step_up_due=not platform.step_up.is_fresh(user),
        notice=confirmation if error is None else None,
        error=error,
        **context,
    )
    notice.forget_notice(request, response, path=NOTICE_PATH)
    return response
