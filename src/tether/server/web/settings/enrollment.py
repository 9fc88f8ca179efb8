"""Settings -> Enrollment tokens: the tokens issued (never their secrets, which the platform
keeps only as hashes), issuing one for an existing segment (chosen, never typed, so a typo
cannot make a new segment), and revoking one.

A new token is shown once, in the answer to the POST that made it, with the command that
enrolls an endpoint; there is no redirect, because the secret must not be put anywhere a later
request could read it back (a cookie, a URL).
"""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid, PlatformError
from tether.server.services.agent_packages import FORMATS, ServedPackage
from tether.server.services.enrollment import IssuedToken
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.settings.common import changes_on, form_fields, show
from tether.server.web.settings.step_up import fresh

router = APIRouter()
EnrollmentAdmin = Annotated[User, Depends(page_require(Permission.ENROLLMENT_MANAGE))]
PAGE = "/settings/enrollment"
# The form's defaults, the API's (`TokenCreate`): one use, valid for a day.
DEFAULTS = {"segment": "default", "uses": "1", "hours": "24"}
PACKAGE_DEFAULTS = {"segment": "default", "format": "deb", "uses": "1", "hours": "24"}


def _whole_number(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise Invalid(f"{what} must be a whole number.") from None


def enroll_command(token: str) -> str:
    """The command an endpoint's administrator runs (docs/operations.md)."""
    return f"tether agent enroll --token {token}"


async def _page(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int = 200,
    error: str | None = None,
    entered: dict[str, str] | None = None,
    issued: IssuedToken | None = None,
    package: ServedPackage | None = None,
    package_entered: dict[str, str] | None = None,
    package_error: str | None = None,
) -> Response:
    return show(
        request,
        "settings/enrollment.html",
        user,
        status_code,
        error=error,
        tokens=await platform.enrollment.list_tokens(),
        segments=[s.name for s in await platform.segments.list()],
        now=platform.users.now(),
        entered=entered or DEFAULTS,
        issued=issued,
        command=enroll_command(issued.token) if issued else "",
        package=package,
        package_entered=package_entered or PACKAGE_DEFAULTS,
        package_error=package_error,
        formats=FORMATS,
    )


async def _render(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int,
    error: str | None,
    entered: object,
) -> Response:
    return await _page(request, platform, user, status_code, error)


_change = changes_on(PAGE, _render)


@router.get(PAGE)
async def tokens_page(request: Request, platform: PlatformDep, user: EnrollmentAdmin) -> Response:
    return await _page(request, platform, user)


@router.post(PAGE)
async def create_token(request: Request, platform: PlatformDep, user: EnrollmentAdmin) -> Response:
    """Issue a token for an existing segment and show it once."""
    entered = dict(DEFAULTS)
    try:
        fields = await form_fields(request)
        entered |= {k: fields[k] for k in DEFAULTS if k in fields}
        await fresh(request, platform, user, "enrollment tokens")
        uses = _whole_number(entered["uses"], "Uses")
        hours = _whole_number(entered["hours"], "Valid for (hours)")
        if not 0 < hours <= 24 * 366:
            # Bounded before timedelta sees it; the service words the real limit.
            hours = 24 * 366 if hours > 0 else 0
        issued = await platform.enrollment.create_token(
            segment=entered["segment"].strip(),
            uses=uses,
            lifetime=timedelta(hours=hours),
            actor=user.actor,
            source=source_of(request),
        )
    except PlatformError as e:
        return await _page(request, platform, user, e.status_code, str(e), entered)
    return await _page(request, platform, user, 201, issued=issued)


def _hours(text: str) -> int:
    hours = _whole_number(text, "Valid for (hours)")
    # Bounded before timedelta sees it; the service words the real limit.
    return min(hours, 24 * 366) if hours > 0 else 0


@router.post(f"{PAGE}/package")
async def create_package(
    request: Request, platform: PlatformDep, user: EnrollmentAdmin
) -> Response:
    """Build an agent package around a fresh token, serve it, and show its install line once
    (its link is as secret as the token, so no redirect, as for a token)."""
    entered = dict(PACKAGE_DEFAULTS)
    try:
        fields = await form_fields(request)
        entered |= {k: fields[k] for k in PACKAGE_DEFAULTS if k in fields}
        await fresh(request, platform, user, "agent packages")
        package = await platform.agent_packages.create(
            fmt=entered["format"],
            segment=entered["segment"].strip(),
            uses=_whole_number(entered["uses"], "Uses"),
            lifetime=timedelta(hours=_hours(entered["hours"])),
            actor=user.actor,
            source=source_of(request),
        )
    except PlatformError as e:
        return await _page(
            request,
            platform,
            user,
            e.status_code,
            package_entered=entered,
            package_error=str(e),
        )
    return await _page(request, platform, user, 201, package=package, package_entered=entered)


@router.post(f"{PAGE}/revoke")
async def revoke_token(request: Request, platform: PlatformDep, user: EnrollmentAdmin) -> Response:
    """Revoke a token at once (no step-up: taking access away is never held up)."""

    async def work() -> str:
        fields = await form_fields(request)
        token = fields.get("token", "")
        if not token.isdigit():
            raise Invalid("Choose the enrollment token to revoke.")
        revoked = await platform.enrollment.revoke_token(
            token, actor=user.actor, source=source_of(request)
        )
        return f"Enrollment token {revoked.id} is revoked; it enrolls nothing more."

    return await _change(request, platform, user, work)
