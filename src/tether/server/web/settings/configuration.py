"""Settings -> Device Configuration: the platform-wide access settings (`GET/PATCH
/api/v1/settings`), the isolation allowlist (`/api/v1/isolation/allowlist`), and the Active
Response switch of each segment, which posts to the Device Segments page's route.

The allowlist is typed one network per line, optionally followed by the only ports it opens:
`10.0.0.0/8` or `192.0.2.10/32 443,8443`. Each line becomes the protocol's `AllowRule`, whose
validation says what is wrong; the isolation service stores and audits the list.
"""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tether.protocol import MAX_AGENT_ADDRESSES, Permission
from tether.protocol.isolation import MAX_ALLOW_RULES, AllowRule
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid
from tether.server.services.access_settings import NAMES
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.numbers import whole_number
from tether.server.web.settings.common import changes_on, form_fields, show
from tether.server.web.settings.step_up import fresh

router = APIRouter()
SettingsAdmin = Annotated[User, Depends(page_require(Permission.SETTINGS_MANAGE))]
PAGE = "/settings/configuration"
# What each platform setting means, in the words of the page (the service's names are keys).
SETTING_LABELS = {
    "mfa_required_for_everyone": "Require a second factor of every user, not only of "
    "Active Response holders",
    "external_access_suspended": "Suspend all external (MDR) users: their sessions end now",
}
# Room for MAX_ALLOW_RULES lines of an IPv6 network and a full list of ports.
ALLOWLIST_LIMIT = MAX_ALLOW_RULES * 256
BAD_PORTS = "ports are numbers from 1 to 65535, separated by commas"


def allowlist_text(rules: list[AllowRule]) -> str:
    """The allowlist as the page's text box shows it, one rule a line."""
    return "\n".join(f"{r.cidr} {','.join(str(p) for p in r.ports)}".strip() for r in rules)


def _rule(number: int, line: str) -> AllowRule:
    network, _, port_text = line.partition(" ")
    read = [whole_number(p) for p in port_text.replace(",", " ").split()]
    ports = tuple(p for p in read if p is not None)
    if len(ports) != len(read):
        raise Invalid(f"Line {number}: {BAD_PORTS}.")
    try:
        return AllowRule(cidr=network, ports=ports)
    except ValidationError as e:
        first = e.errors()[0]
        # A validator's own sentence when it has one, else pydantic's description.
        reason = str(first.get("ctx", {}).get("error", "")) or first["msg"]
        if first["loc"] and first["loc"][0] == "ports":
            reason = BAD_PORTS
        raise Invalid(f"Line {number}: {reason.rstrip('.')}.") from None


def parse_allowlist(text: str) -> list[AllowRule]:
    """One rule per non-blank line; the first bad line is refused with its number."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    return [_rule(n, line) for n, line in lines if line]


async def _page(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int = 200,
    error: str | None = None,
    typed_allowlist: str | None = None,
    typed_addresses: str | None = None,
) -> Response:
    switches = Permission.SEGMENTS_MANAGE in user.permissions
    if typed_allowlist is None:
        typed_allowlist = allowlist_text(await platform.isolation.allowlist())
    return show(
        request,
        "settings/configuration.html",
        user,
        status_code,
        error=error,
        settings=asdict(await platform.access_settings.get()),
        labels=SETTING_LABELS,
        allowlist=typed_allowlist,
        max_rules=MAX_ALLOW_RULES,
        # The switches post to the segments' route, which needs segments.manage.
        segments=await platform.segments.list() if switches else [],
        switch_back="configuration",
        agent_addresses="\n".join(await platform.agent_addresses.get())
        if typed_addresses is None
        else typed_addresses,
        agents_dial=await platform.agent_addresses.urls(),
    )


_change = changes_on(PAGE, _page)


async def _addresses_page(
    request: Request,
    platform: PlatformDep,
    user: User,
    status_code: int = 200,
    error: str | None = None,
    typed: str | None = None,
) -> Response:
    return await _page(request, platform, user, status_code, error, typed_addresses=typed)


_change_addresses = changes_on(PAGE, _addresses_page)
# Room for MAX_AGENT_ADDRESSES lines of a long host name.
ADDRESSES_LIMIT = MAX_AGENT_ADDRESSES * 300


@router.get(PAGE)
async def configuration(request: Request, platform: PlatformDep, user: SettingsAdmin) -> Response:
    return await _page(request, platform, user)


@router.post(PAGE)
async def save_settings(request: Request, platform: PlatformDep, user: SettingsAdmin) -> Response:
    """Save the settings' checkboxes (an unticked box is sent as nothing: it means off)."""

    async def change() -> str:
        fields = await form_fields(request)
        wanted = {name: fields.get(name) == "on" for name in sorted(NAMES)}
        await fresh(request, platform, user, "access settings")
        before = asdict(await platform.access_settings.get())
        await platform.access_settings.update(wanted, actor=user.actor, source=source_of(request))
        changed = [n for n in wanted if wanted[n] != before.get(n)]
        return "Settings saved." if changed else "Nothing changed."

    return await _change(request, platform, user, change)


@router.post(PAGE + "/allowlist")
async def save_allowlist(request: Request, platform: PlatformDep, user: SettingsAdmin) -> Response:
    typed = (await request.form()).get("rules")
    typed_text = typed[:ALLOWLIST_LIMIT] if isinstance(typed, str) else ""

    async def change() -> str:
        fields = await form_fields(request, limit=ALLOWLIST_LIMIT)
        saved = await platform.isolation.set_allowlist(
            parse_allowlist(fields.get("rules", "")), actor=user.actor, source=source_of(request)
        )
        noun = "entry" if len(saved) == 1 else "entries"
        return (
            f"Isolation allowlist saved ({len(saved)} {noun}); isolated hosts take it up as soon "
            "as they hear of it."
        )

    return await _change(request, platform, user, change, typed_text)


@router.post(PAGE + "/agent-addresses")
async def save_agent_addresses(
    request: Request, platform: PlatformDep, user: SettingsAdmin
) -> Response:
    """One HOST:PORT a line; an empty box means agents dial the agent port (docs/adr/0049)."""
    typed = (await request.form()).get("addresses")
    typed_text = typed[:ADDRESSES_LIMIT] if isinstance(typed, str) else ""

    async def change() -> str:
        fields = await form_fields(request, limit=ADDRESSES_LIMIT)
        lines = [line.strip() for line in fields.get("addresses", "").splitlines()]
        await fresh(request, platform, user, "agent addresses")
        saved = await platform.agent_addresses.update(
            [line for line in lines if line], actor=user.actor, source=source_of(request)
        )
        if not saved:
            return "Agent addresses cleared: agents dial the agent port."
        return (
            f"Agent addresses saved ({len(saved)}); connected agents get them at their next "
            "connection, new agents at enrollment."
        )

    return await _change_addresses(request, platform, user, change, typed_text)
