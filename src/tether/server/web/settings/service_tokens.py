"""Settings -> Service tokens: the tokens automation calls the API with (docs/adr/0038), listed
with their bounds and last use, created with a fresh second factor, and revoked.

Each action calls `ServiceTokens` exactly as `tether.server.api.service_tokens` does, so the
checks and the audit records (`service_token.create`, `service_token.revoke`) are the service's.
A new token is shown once, in the answer to the POST that made it, as a new enrollment token is
(docs/adr/0020): no redirect, because the secret must not be put anywhere a later request could
read it back. Revoking asks again on the page first (no script dialog under the CSP); like the
API, it needs no step-up: taking access away is never held up.
"""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import TIERS, Permission, Tier
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid, PlatformError
from tether.server.services.service_tokens import (
    ACTOR_PREFIX,
    MAX_SOURCES,
    IssuedServiceToken,
)
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.numbers import whole_number
from tether.server.web.settings.common import changes_on, form_fields, form_values, show
from tether.server.web.settings.step_up import fresh
from tether.server.web.settings.tiers import tier_lines

router = APIRouter()
TokenAdmin = Annotated[User, Depends(page_require(Permission.USERS_MANAGE))]
PAGE = "/settings/service-tokens"
# How long a token lives, as the form offers it; the service holds it to 5 minutes - 365 days.
UNITS = {"days": timedelta(days=1), "hours": timedelta(hours=1), "minutes": timedelta(minutes=1)}
# Room for MAX_SOURCES lines of an IPv6 network.
SOURCES_LIMIT = MAX_SOURCES * 64
BAD_LIFETIME = "Write how long the token lives as a whole number of days, hours or minutes."


@dataclass
class Entered:
    """What the create form holds: its defaults, or what was typed when a refusal sends it back."""

    name: str = ""
    # The lowest tier: an admin raises it on purpose, never by leaving the default.
    tier: str = Tier.COLLECT.value
    segments: list[str] = field(default_factory=list)
    lifetime: str = "30"
    unit: str = "days"
    sources: str = ""


def _tier(text: str) -> Tier:
    try:
        return Tier(text)
    except ValueError:
        raise Invalid(f"There is no Active Response tier named {text[:64]!r}.") from None


def _lifetime(entered: Entered) -> timedelta:
    number, unit = whole_number(entered.lifetime.strip()), UNITS.get(entered.unit)
    if number is None or unit is None:
        raise Invalid(BAD_LIFETIME)
    # At most nine digits: even that many days fits a timedelta; the service words the limits.
    return number * unit


def parse_sources(text: str) -> list[str]:
    """Addresses or networks, one a line (commas and spaces separate them too); the service
    checks each and names the first bad one."""
    return text.replace(",", " ").split()


async def _page(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int = 200,
    error: str | None = None,
    entered: Entered | None = None,
    issued: IssuedServiceToken | None = None,
    confirm_revoke: str | None = None,
) -> Response:
    return show(
        request,
        "settings/service_tokens.html",
        user,
        status_code,
        error=error,
        tokens=await platform.service_tokens.list(),
        segments=[s.name for s in await platform.segments.list()],
        tiers=[t.value for t in TIERS],
        units=list(UNITS),
        now=platform.users.now(),
        entered=entered or Entered(),
        issued=issued,
        actor_prefix=ACTOR_PREFIX,
        confirm_revoke=confirm_revoke,
        tier_lines=tier_lines(),
    )


_change = changes_on(PAGE, _page)


@router.get(PAGE)
async def service_tokens_page(
    request: Request, platform: PlatformDep, user: TokenAdmin
) -> Response:
    return await _page(request, platform, user)


@router.post(PAGE)
async def create_service_token(
    request: Request, platform: PlatformDep, user: TokenAdmin
) -> Response:
    """Create a token bound to a tier, existing segments, an expiry and source networks, and
    show it once (status 201)."""
    entered = Entered()
    try:
        fields = await form_fields(request, limit=SOURCES_LIMIT)
        entered = Entered(
            name=fields.get("name", "").strip()[:64],
            tier=fields.get("tier", entered.tier),
            segments=await form_values(request, "segment"),
            lifetime=fields.get("lifetime", "")[:16],
            unit=fields.get("unit", ""),
            sources=fields.get("sources", ""),
        )
        await fresh(request, platform, user, "service tokens")
        issued = await platform.service_tokens.create(
            fields.get("name", "").strip(),
            _tier(entered.tier),
            entered.segments,
            _lifetime(entered),
            parse_sources(entered.sources),
            by=user,
            source=source_of(request),
        )
    except PlatformError as e:
        return await _page(request, platform, user, e.status_code, str(e), entered)
    return await _page(request, platform, user, 201, issued=issued)


@router.post(PAGE + "/{name}/revoke")
async def revoke_service_token(
    name: str, request: Request, platform: PlatformDep, user: TokenAdmin
) -> Response:
    """The first post asks again on the page; the second (`confirm=yes`) revokes at once."""
    try:
        confirmed = (await form_fields(request)).get("confirm") == "yes"
        before = await platform.service_tokens.get(name)
    except PlatformError as e:
        return await _page(request, platform, user, e.status_code, str(e))
    if before.revoked_at is not None:
        return await _page(
            request, platform, user, 409, f"Service token {name} is already revoked."
        )
    if not confirmed:
        # Nothing changes yet: the page asks again, with the button that does it.
        return await _page(request, platform, user, confirm_revoke=name)

    async def revoke() -> str:
        await platform.service_tokens.revoke(name, by=user, source=source_of(request))
        return (
            f"Service token {name} revoked: its next call is refused, and the jobs it queued "
            "were withdrawn."
        )

    return await _change(request, platform, user, revoke)
