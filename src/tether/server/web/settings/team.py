"""Settings -> Team: the users, their roles, second factor, disabling, and external (MDR) access.

Each action calls the `Team` or `Users` service exactly as `tether.server.api.users` does, so
the audit record, the last-admin rule and the ending of sessions happen there; the page shows
the service's refusal sentence as it is.
"""

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import TIER_ROLES, Permission, Role
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid, PlatformError
from tether.server.services.enrollment_codes import IssuedCode
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.settings.common import changes_on, form_fields, form_values, show
from tether.server.web.settings.step_up import fresh
from tether.server.web.settings.tiers import tier_lines

router = APIRouter()
TeamAdmin = Annotated[User, Depends(page_require(Permission.USERS_MANAGE))]
PAGE = "/settings/team"
# How the page names each role; the three tiers are the Active Response role's.
ROLE_LABELS = {
    Role.ADMIN: "Admin",
    Role.ANALYST: "Analyst",
    Role.COLLECT: "Active Response: collect",
    Role.RESPOND: "Active Response: respond",
    Role.SCRIPT: "Active Response: script",
}
MAX_ORGANISATION = 60
BAD_DATE = "Write the last day of access as a date, YYYY-MM-DD."


def _role(name: str) -> Role:
    try:
        return Role(name)
    except ValueError:
        raise Invalid(f"There is no role named {name!r}.") from None


def _role_phrase(role: Role) -> str:
    """How a confirmation names a role: "the Admin role", "the respond tier of Active Response"."""
    if role in TIER_ROLES:
        return f"the {role.value} tier of Active Response"
    return f"the {ROLE_LABELS[role]} role"


def _access_ends(text: str) -> datetime | None:
    """The expiry of external access: the end (in UTC) of the last day the admin entered."""
    if not text.strip():
        return None
    try:
        last_day = date.fromisoformat(text.strip())
        return datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC)
    except (ValueError, OverflowError):
        raise Invalid(BAD_DATE) from None


async def _page(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int = 200,
    error: str | None = None,
    entered: dict[str, str] | None = None,
    issued: IssuedCode | None = None,
) -> Response:
    return show(
        request,
        "settings/team.html",
        user,
        status_code,
        error=error,
        members=await platform.team.list(),
        role_labels=ROLE_LABELS,
        now=platform.users.now(),
        # What the create form held when it was refused, so the admin need not type it again.
        entered=entered or {},
        # An enrollment code just issued: shown on this answer only, never stored.
        issued=issued,
        tier_lines=tier_lines(),
    )


_change = changes_on(PAGE, _page)


@router.get(PAGE)
async def team(request: Request, platform: PlatformDep, user: TeamAdmin) -> Response:
    return await _page(request, platform, user)


@router.post(PAGE)
async def create_user(request: Request, platform: PlatformDep, user: TeamAdmin) -> Response:
    typed = (await request.form()).get("username")

    async def create() -> str:
        fields = await form_fields(request)
        username = fields.get("username", "")
        roles = {_role(n) for n in await form_values(request, "role")}
        await fresh(request, platform, user, "users")
        await platform.users.create(
            username,
            fields.get("password", ""),
            roles,
            actor=user.actor,
            source=source_of(request),
        )
        held = ", ".join(ROLE_LABELS[r] for r in sorted(roles)) or "no role"
        return f"User {username} created ({held})."

    # A refused form comes back with the username typed (never the password).
    entered = {"username": typed[:64] if isinstance(typed, str) else ""}
    return await _change(request, platform, user, create, entered)


@router.post(PAGE + "/{username}/roles")
async def change_role(
    username: str, request: Request, platform: PlatformDep, user: TeamAdmin
) -> Response:
    """Grant (`grant=yes`) or remove a role; a tier replaces the one held, and removing or
    lowering a tier ends their sessions."""

    async def change() -> str:
        fields = await form_fields(request)
        role = _role(fields.get("role", ""))
        source = source_of(request)
        await fresh(request, platform, user, "roles")
        if fields.get("grant") == "yes":
            info = await platform.team.grant_role(username, role, by=user, source=source)
            return f"{info.username} now holds {_role_phrase(role)}."
        info = await platform.team.revoke_role(username, role, by=user, source=source)
        return f"{info.username} no longer holds {_role_phrase(role)}."

    return await _change(request, platform, user, change)


@router.post(PAGE + "/{username}/disable")
async def disable_user(
    username: str, request: Request, platform: PlatformDep, user: TeamAdmin
) -> Response:
    async def change() -> str:
        info = await platform.team.set_disabled(
            username, True, actor=user.actor, source=source_of(request)
        )
        return f"{info.username} is disabled; their sessions have ended."

    return await _change(request, platform, user, change)


@router.post(PAGE + "/{username}/enable")
async def enable_user(
    username: str, request: Request, platform: PlatformDep, user: TeamAdmin
) -> Response:
    async def change() -> str:
        info = await platform.team.set_disabled(
            username, False, actor=user.actor, source=source_of(request)
        )
        return f"{info.username} is enabled."

    return await _change(request, platform, user, change)


@router.post(PAGE + "/{username}/mfa-reset")
async def reset_second_factor(
    username: str, request: Request, platform: PlatformDep, user: TeamAdmin
) -> Response:
    """Forget the user's second factor and show the enrollment code for the new one, once."""
    try:
        await fresh(request, platform, user, "second factor")
        issued = await platform.team.reset_mfa(username, by=user, source=source_of(request))
    except PlatformError as e:
        return await _page(request, platform, user, e.status_code, str(e))
    return await _page(request, platform, user, issued=issued)


@router.post(PAGE + "/{username}/enrollment-code")
async def issue_enrollment_code(
    username: str, request: Request, platform: PlatformDep, user: TeamAdmin
) -> Response:
    """Issue the one-time code a user needs to enroll their first second factor; shown once."""
    try:
        await fresh(request, platform, user, "second factor")
        issued = await platform.users.mfa.codes.issue(
            username, actor=user.actor, actor_username=user.username, source=source_of(request)
        )
    except PlatformError as e:
        return await _page(request, platform, user, e.status_code, str(e))
    return await _page(request, platform, user, issued=issued)


@router.post(PAGE + "/{username}/external")
async def set_external(
    username: str, request: Request, platform: PlatformDep, user: TeamAdmin
) -> Response:
    """Mark MDR provider staff external (organisation, last day of access), or internal."""

    async def change() -> str:
        fields = await form_fields(request)
        external = fields.get("external") == "yes"
        ends = _access_ends(fields.get("until", "")) if external else None
        organisation = fields.get("organisation", "").strip() or None
        await fresh(request, platform, user, "users")
        if organisation is not None and len(organisation) > MAX_ORGANISATION:
            # The API's body schema holds organisations to this length; the service does not.
            raise Invalid(f"An organisation name is at most {MAX_ORGANISATION} characters.")
        info = await platform.team.set_external(
            username,
            external=external,
            organisation=organisation if external else None,
            access_expires_at=ends,
            actor=user.actor,
            source=source_of(request),
        )
        if not info.external:
            return f"{info.username} is internal."
        until = f"until {(ends - timedelta(days=1)).date()}" if ends else "without an expiry"
        return f"{info.username} is external ({info.organisation}), with access {until}."

    return await _change(request, platform, user, change)
