"""Request dependencies: the platform, the caller's identity and permission checks.

Authentication is applied to the whole protected router (see `tether.server.app`); a route is
public only by being placed on the public router, which is short and reviewed.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from tether.protocol import Permission
from tether.protocol.step_up import CODE_HEADER
from tether.server.errors import Forbidden, Unauthenticated
from tether.server.services.client_text import untrusted_text
from tether.server.services.platform import Platform
from tether.server.services.service_tokens import PREFIX as SERVICE_TOKEN_PREFIX
from tether.server.services.users import User

SESSION_COOKIE = "tether_session"

# What a session limited to setting up a second factor may still do; `Users.authenticate`
# refuses every other path for such a session.
ENROLLMENT_PATHS = frozenset(
    {
        "/api/v1/auth/mfa/enroll",
        "/api/v1/auth/mfa/confirm",
        "/api/v1/auth/mfa/cancel",
        "/api/v1/auth/logout",
        "/api/v1/auth/whoami",
    }
)


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def source_of(request: Request) -> str:
    """Who is calling, for the audit log: address and client software."""
    address = request.client.host if request.client else "unknown"
    # The client chooses its user agent: bounded and without control characters before it goes
    # into a signed record or onto a page.
    agent = untrusted_text(request.headers.get("user-agent", ""), limit=60)
    return f"{address} {agent}".strip()


def bearer_token(request: Request) -> str:
    """The API's credential: the Authorization header only.

    The web UI's session cookie is not accepted here: a browser attaches it to any request, so
    the API would need the pages' CSRF check on every change; the pages have their own routes.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    raise Unauthenticated("Log in first: this request carries no session.")


# What a service token may not reach: a person's own session and factor, and live sessions (an
# interactive shell is a person's; automation submits jobs). Prefixes under the API.
SERVICE_REFUSED = ("/api/v1/auth/", "/api/v1/sessions")
SERVICE_WHOAMI = "/api/v1/auth/whoami"
NOT_FOR_SERVICES = (
    "A service token cannot do this: live sessions and a person's own session and second "
    "factor are for people; automation submits jobs."
)


async def current_user(
    request: Request, platform: Annotated[Platform, Depends(get_platform)]
) -> User:
    token = bearer_token(request)
    path = request.url.path
    if token.startswith(SERVICE_TOKEN_PREFIX):
        address = request.client.host if request.client else "unknown"
        refused = path != SERVICE_WHOAMI and path.startswith(SERVICE_REFUSED)
        user = await platform.service_tokens.authenticate(
            token,
            address,
            method=request.method,
            path=path,
            forbidden=NOT_FOR_SERVICES if refused else None,
        )
    else:
        user = await platform.users.authenticate(token, enrolling=path in ENROLLMENT_PATHS)
    request.state.user = user
    return user


async def record_refusal(
    platform: Platform, request: Request, user: User, permission: Permission, action: str
) -> None:
    """Put a refused request on record under `action` (an API route or a web page)."""
    await platform.audit.record(
        action,
        actor=user.actor,
        target=request.url.path,
        outcome="failure",
        source=source_of(request),
        details={"method": request.method, "permission": permission.value},
    )


def require(
    permission: Permission, *, audit_refusal: str | None = None
) -> Callable[..., Awaitable[User]]:
    """A dependency that admits only users holding `permission`; with `audit_refusal`, each
    refusal is also recorded in the audit log under that action."""

    async def check(
        request: Request,
        user: Annotated[User, Depends(current_user)],
        platform: Annotated[Platform, Depends(get_platform)],
    ) -> User:
        if permission not in user.permissions:
            if audit_refusal is not None:
                await record_refusal(platform, request, user, permission, audit_refusal)
            raise Forbidden(f"You need the {permission.value} permission for this.")
        return user

    check.permission = permission  # type: ignore[attr-defined]
    return check


async def require_step_up(request: Request, platform: Platform, user: User, what: str) -> None:
    """Refuse (StepUpRequired) unless the session passed its second factor within the step-up
    window or the request carries a fresh code in the X-Tether-Code header; audited."""
    await platform.step_up.require_fresh(
        user, request.headers.get(CODE_HEADER), what=what, source=source_of(request)
    )


def require_fresh(permission: Permission, what: str) -> Callable[..., Awaitable[User]]:
    """Like `require`, for a sensitive change: the session must also have passed its second
    factor within the step-up window, or send a fresh code (`what` names the change)."""
    permitted = require(permission)

    async def check(
        request: Request,
        user: Annotated[User, Depends(permitted)],
        platform: Annotated[Platform, Depends(get_platform)],
    ) -> User:
        await require_step_up(request, platform, user, what)
        return user

    check.permission = permission  # type: ignore[attr-defined]
    return check


PlatformDep = Annotated[Platform, Depends(get_platform)]
UserDep = Annotated[User, Depends(current_user)]
