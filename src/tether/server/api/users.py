"""The team (users and their roles) and the platform-wide access settings: admins only.

Granting and removing roles, the Active Response role included, needs `users.manage`, which only
the admin role holds (`tether.protocol.permissions`).
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tether.protocol import Permission, Role
from tether.server.api.deps import PlatformDep, require, require_fresh, source_of
from tether.server.api.user_schemas import (
    DEFAULT_CODE_HOURS,
    AgentAddressesBody,
    AgentAddressesOut,
    EnrollmentCodeOut,
    EnrollmentCodeRequest,
    ExternalUpdate,
    SettingsOut,
    SettingsUpdate,
    UserCreate,
    UserOut,
)
from tether.server.services.platform import Platform
from tether.server.services.team import UserInfo
from tether.server.services.users import User

router = APIRouter(tags=["team"])
Admin = Annotated[User, Depends(require(Permission.USERS_MANAGE))]
SettingsAdmin = Annotated[User, Depends(require(Permission.SETTINGS_MANAGE))]
# Sensitive changes: a fresh second-factor check (step-up) as well as the permission.
RoleAdmin = Annotated[User, Depends(require_fresh(Permission.USERS_MANAGE, "roles"))]
UserAdmin = Annotated[User, Depends(require_fresh(Permission.USERS_MANAGE, "users"))]
FactorAdmin = Annotated[User, Depends(require_fresh(Permission.USERS_MANAGE, "second factor"))]
AccessSettingsAdmin = Annotated[
    User, Depends(require_fresh(Permission.SETTINGS_MANAGE, "access settings"))
]
AddressesAdmin = Annotated[
    User, Depends(require_fresh(Permission.SETTINGS_MANAGE, "agent addresses"))
]


def _out(info: UserInfo) -> UserOut:
    return UserOut.of(info)


def _utc(value: datetime | None) -> datetime | None:
    """Dates without a zone are taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("/users", response_model=list[UserOut])
async def list_users(platform: PlatformDep, _user: Admin) -> list[UserOut]:
    return [_out(u) for u in await platform.team.list()]


@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(
    body: UserCreate, request: Request, platform: PlatformDep, user: UserAdmin
) -> UserOut:
    await platform.users.create(
        body.username,
        body.password,
        set(body.roles),
        external=body.external,
        organisation=body.organisation,
        access_expires_at=_utc(body.access_expires_at),
        actor=user.actor,
        source=source_of(request),
    )
    return _out(await platform.team.get(body.username))


@router.post("/users/{username}/disable", response_model=UserOut)
async def disable_user(
    username: str, request: Request, platform: PlatformDep, user: Admin
) -> UserOut:
    """Disable the account; its sessions and live response sessions end at once."""
    return _out(
        await platform.team.set_disabled(
            username, True, actor=user.actor, source=source_of(request)
        )
    )


@router.post("/users/{username}/enable", response_model=UserOut)
async def enable_user(
    username: str, request: Request, platform: PlatformDep, user: Admin
) -> UserOut:
    return _out(
        await platform.team.set_disabled(
            username, False, actor=user.actor, source=source_of(request)
        )
    )


@router.put("/users/{username}/roles/{role}", response_model=UserOut)
async def grant_role(
    username: str, role: Role, request: Request, platform: PlatformDep, user: RoleAdmin
) -> UserOut:
    """Give a role; never to one's own account."""
    return _out(await platform.team.grant_role(username, role, by=user, source=source_of(request)))


@router.delete("/users/{username}/roles/{role}", response_model=UserOut)
async def revoke_role(
    username: str, role: Role, request: Request, platform: PlatformDep, user: RoleAdmin
) -> UserOut:
    """Remove a role (never from one's own account); removing a tier ends the user's
    sessions at once."""
    return _out(await platform.team.revoke_role(username, role, by=user, source=source_of(request)))


@router.put("/users/{username}/external", response_model=UserOut)
async def set_external(
    username: str, body: ExternalUpdate, request: Request, platform: PlatformDep, user: UserAdmin
) -> UserOut:
    """Mark a user as MDR provider staff (organisation, access expiry), or as internal."""
    return _out(
        await platform.team.set_external(
            username,
            external=body.external,
            organisation=body.organisation,
            access_expires_at=_utc(body.access_expires_at),
            actor=user.actor,
            source=source_of(request),
        )
    )


@router.get("/settings", response_model=SettingsOut)
async def get_settings(platform: PlatformDep, _user: SettingsAdmin) -> SettingsOut:
    return SettingsOut.of(await platform.access_settings.get())


@router.patch("/settings", response_model=SettingsOut)
async def update_settings(
    body: SettingsUpdate, request: Request, platform: PlatformDep, user: AccessSettingsAdmin
) -> SettingsOut:
    changes = body.model_dump(exclude_none=True)
    updated = await platform.access_settings.update(
        changes, actor=user.actor, source=source_of(request)
    )
    return SettingsOut.of(updated)


async def _addresses_out(platform: Platform) -> AgentAddressesOut:
    listed = await platform.agent_addresses.get()
    return AgentAddressesOut(
        addresses=listed, agents_dial=list(await platform.agent_addresses.urls())
    )


@router.get("/settings/agent-addresses", response_model=AgentAddressesOut)
async def get_agent_addresses(platform: PlatformDep, _user: SettingsAdmin) -> AgentAddressesOut:
    return await _addresses_out(platform)


@router.put("/settings/agent-addresses", response_model=AgentAddressesOut)
async def set_agent_addresses(
    body: AgentAddressesBody, request: Request, platform: PlatformDep, user: AddressesAdmin
) -> AgentAddressesOut:
    await platform.agent_addresses.update(
        body.addresses, actor=user.actor, source=source_of(request)
    )
    return await _addresses_out(platform)


@router.post("/users/{username}/mfa/reset", response_model=EnrollmentCodeOut)
async def reset_mfa(
    username: str,
    request: Request,
    platform: PlatformDep,
    user: FactorAdmin,
    body: EnrollmentCodeRequest | None = None,
) -> EnrollmentCodeOut:
    """Forget the user's second factor (a lost phone) and issue the enrollment code they need
    to enroll a new one (shown once); never for one's own account."""
    issued = await platform.team.reset_mfa(
        username, by=user, source=source_of(request), lifetime=_lifetime(body)
    )
    return EnrollmentCodeOut.of(issued)


@router.post("/users/{username}/enrollment-code", response_model=EnrollmentCodeOut)
async def issue_enrollment_code(
    username: str,
    request: Request,
    platform: PlatformDep,
    user: FactorAdmin,
    body: EnrollmentCodeRequest | None = None,
) -> EnrollmentCodeOut:
    """A one-time code the user needs to enroll their first second factor (shown once)."""
    issued = await platform.users.mfa.codes.issue(
        username,
        actor=user.actor,
        actor_username=user.username,
        source=source_of(request),
        lifetime=_lifetime(body),
    )
    return EnrollmentCodeOut.of(issued)


def _lifetime(body: EnrollmentCodeRequest | None) -> timedelta:
    return timedelta(hours=body.hours if body is not None else DEFAULT_CODE_HOURS)
