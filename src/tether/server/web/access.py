"""Who is asking, for the pages: the session behind the cookie, permissions, CSRF on changes.

The checks are the API's (`Users.authenticate`, the role -> permission table); what differs is the
answer: a browser is sent to the login page or the enrollment page, or shown a 403 page.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, record_refusal
from tether.server.errors import SecondFactorRequired, Unauthenticated
from tether.server.services.users import User
from tether.server.web.security import (
    CSRF_REFUSED,
    csrf_token_for,
    sent_csrf,
    session_token,
    tokens_match,
)

# Pages a session limited to enrolling a second factor may open.
ENROLLMENT_PAGES = frozenset({"/mfa/enroll", "/mfa/confirm", "/mfa/cancel", "/logout"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LoginRequired(Exception):
    """No valid session: the browser goes to the login page."""


class EnrollmentRequired(Exception):
    """The session may only enroll a second factor: the browser goes to the enrollment page."""


class PageForbidden(Exception):
    """The user may not see this page; shown as a 403 page with this sentence."""


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token."""

    def __init__(self) -> None:
        super().__init__(CSRF_REFUSED)


async def signed_in(request: Request, platform: PlatformDep) -> User:
    """The signed-in user, without the CSRF check: only for a handler that checks the token
    itself (`check_csrf`), because reading the form here would consume a streamed upload."""
    try:
        token = session_token(request)
        user = await platform.users.authenticate(
            token, enrolling=request.url.path in ENROLLMENT_PAGES
        )
    except Unauthenticated as e:
        raise LoginRequired() from e
    except SecondFactorRequired as e:
        if e.enrolled:
            # A second factor exists but this session never passed it: log in again.
            raise LoginRequired() from e
        raise EnrollmentRequired() from e
    request.state.user = user
    request.state.csrf_token = csrf_token_for(token)
    if (
        request.method == "GET"
        and "HX-Request" not in request.headers
        and Permission.ACTIVE_RESPONSE in user.permissions
    ):
        # The nav's count of requests this person may approve (docs/adr/0039); not for the
        # polled fragments, which show no nav.
        request.state.approvals_waiting = len(await platform.approvals.pending_for(user))
    return user


def check_csrf(request: Request, sent: str | None) -> None:
    """CsrfRefused unless `sent` is the token of the session `signed_in` found."""
    if not tokens_match(request.state.csrf_token, sent):
        raise CsrfRefused()


async def web_user(request: Request, platform: PlatformDep) -> User:
    """The signed-in user; checks the CSRF token of every state-changing request."""
    user = await signed_in(request, platform)
    if request.method in STATE_CHANGING:
        check_csrf(request, await sent_csrf(request))
    return user


def page_require(
    permission: Permission, *, audit_refusal: str | None = None, csrf_in_handler: bool = False
) -> Callable[..., Awaitable[User]]:
    """Admit only users holding `permission`; with `audit_refusal`, record each refusal in the
    audit log under that action, as the API's `require` does. With `csrf_in_handler`, the
    handler must call `check_csrf` before it changes anything (a streamed upload's form)."""
    session = signed_in if csrf_in_handler else web_user

    async def check(
        request: Request,
        user: Annotated[User, Depends(session)],
        platform: PlatformDep,
    ) -> User:
        if permission not in user.permissions:
            if audit_refusal is not None:
                await record_refusal(platform, request, user, permission, audit_refusal)
            raise PageForbidden(f"You need the {permission.value} permission for this page.")
        return user

    check.permission = permission  # type: ignore[attr-defined]
    return check


WebUserDep = Annotated[User, Depends(web_user)]
