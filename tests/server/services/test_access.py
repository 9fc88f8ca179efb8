"""The response-action check: every refusal, in order, on both databases."""

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Role
from tether.server.errors import Forbidden, NotFound
from tether.server.services.access import (
    NO_PERMISSION,
    NO_SECOND_FACTOR,
    ResponseAccess,
    ResponseState,
    host_refusal,
)
from tether.server.services.users import User
from tether.server.store.tables import hosts, segments

from ..support import add_host

SEGMENT_OFF = "Active Response is off in segment lab, so response actions on ws are refused."
LOCAL_OFF = "Response actions are switched off locally on ws by its endpoint owner's agent setting."
REVOKED = "Host ws is revoked, so no response action can run on it."


def user(*roles: Role, mfa: bool = True) -> User:
    return User(1, "u", frozenset(r.value for r in roles), False, mfa_verified=mfa)


RESPONDER = user(Role.SCRIPT)


@pytest.fixture
def access(engine: AsyncEngine) -> ResponseAccess:
    return ResponseAccess(engine)


async def set_host(
    engine: AsyncEngine,
    host_id: str,
    *,
    switch: bool | None = None,
    local: bool | None = None,
    revoked: bool = False,
) -> None:
    async with engine.begin() as conn:
        if switch is not None:
            await conn.execute(update(segments).values(active_response=switch))
        values: dict[str, object] = {}
        if local is not None:
            values["response_disabled_locally"] = local
        if revoked:
            values["revoked_at"] = datetime.now(UTC)
        if values:
            await conn.execute(update(hosts).where(hosts.c.id == host_id).values(**values))


@pytest.fixture
async def host(engine: AsyncEngine) -> str:
    """Host ws in segment lab, Active Response on, no local switch: everything allowed."""
    host_id = await add_host(engine, "ws", segment="lab")
    await set_host(engine, host_id, switch=True)
    return host_id


async def test_allowed_when_everything_agrees(access: ResponseAccess, host: str) -> None:
    state = await access.authorize_response(RESPONDER, host)
    assert (state.hostname, state.segment, state.segment_active_response) == ("ws", "lab", True)
    assert await access.authorize_dispatch(host) == state
    assert await access.dispatch_refusals([host]) == {}


@pytest.mark.parametrize(
    "who",
    [user(), user(Role.ANALYST), user(Role.ADMIN), user(Role.ADMIN, Role.ANALYST)],
    ids=["no role", "analyst", "admin", "admin+analyst"],
)
async def test_users_without_the_active_response_role_are_refused_first(
    access: ResponseAccess, engine: AsyncEngine, host: str, who: User
) -> None:
    # Even with every host-side reason to refuse present, the role is named first.
    await set_host(engine, host, switch=False, local=True, revoked=True)
    with pytest.raises(Forbidden) as refused:
        await access.authorize_response(who, host)
    assert str(refused.value) == NO_PERMISSION


async def test_second_factor_is_checked_after_the_role(
    access: ResponseAccess, engine: AsyncEngine, host: str
) -> None:
    await set_host(engine, host, switch=False, revoked=True)
    for who in (user(Role.SCRIPT, mfa=False), user(Role.ADMIN, Role.SCRIPT, mfa=False)):
        with pytest.raises(Forbidden) as refused:
            await access.authorize_response(who, host)
        assert str(refused.value) == NO_SECOND_FACTOR


async def test_revoked_host_is_refused_before_the_segment_switch(
    access: ResponseAccess, engine: AsyncEngine, host: str
) -> None:
    await set_host(engine, host, switch=False, local=True, revoked=True)
    with pytest.raises(Forbidden, match=f"^{re.escape(REVOKED)}$"):
        await access.authorize_response(RESPONDER, host)
    with pytest.raises(Forbidden, match=f"^{re.escape(REVOKED)}$"):
        await access.authorize_dispatch(host)


async def test_segment_switch_off_is_refused_before_the_local_switch(
    access: ResponseAccess, engine: AsyncEngine, host: str
) -> None:
    await set_host(engine, host, switch=False, local=True)
    with pytest.raises(Forbidden) as refused:
        await access.authorize_response(RESPONDER, host)
    assert str(refused.value) == SEGMENT_OFF
    with pytest.raises(Forbidden) as refused:
        await access.authorize_dispatch(host)
    assert str(refused.value) == SEGMENT_OFF


async def test_local_switch_is_refused_last(
    access: ResponseAccess, engine: AsyncEngine, host: str
) -> None:
    await set_host(engine, host, local=True)
    with pytest.raises(Forbidden) as refused:
        await access.authorize_response(RESPONDER, host)
    assert str(refused.value) == LOCAL_OFF
    with pytest.raises(Forbidden) as refused:
        await access.authorize_dispatch(host)
    assert str(refused.value) == LOCAL_OFF


async def test_dispatch_refuses_a_host_that_left_the_enabled_segment(
    access: ResponseAccess, engine: AsyncEngine, host: str
) -> None:
    # Submitted while allowed...
    await access.authorize_response(RESPONDER, host)
    # ...then moved to a segment whose switch is off before the job was sent.
    other = await add_host(engine, "elsewhere", segment="quarantine")
    async with engine.begin() as conn:
        quarantine = (
            await conn.execute(segments.select().where(segments.c.name == "quarantine"))
        ).one()
        await conn.execute(update(hosts).where(hosts.c.id == host).values(segment_id=quarantine.id))
    assert other
    with pytest.raises(Forbidden) as refused:
        await access.authorize_dispatch(host)
    assert str(refused.value) == (
        "Active Response is off in segment quarantine, so response actions on ws are refused."
    )


async def test_batched_dispatch_check_names_each_refused_host(
    access: ResponseAccess, engine: AsyncEngine, host: str
) -> None:
    local = await add_host(engine, "ws2", segment="lab")
    await set_host(engine, local, local=True)
    refusals = await access.dispatch_refusals([host, local, "gone"])
    assert refusals == {
        local: "Response actions are switched off locally on ws2 by its endpoint owner's "
        "agent setting.",
        "gone": "No host has the id 'gone'.",
    }


async def test_unknown_host_is_not_found(access: ResponseAccess) -> None:
    with pytest.raises(NotFound, match=re.escape("No host has the id 'nope'.")):
        await access.authorize_response(RESPONDER, "nope")
    with pytest.raises(NotFound):
        await access.authorize_dispatch("nope")


def test_host_refusal_is_none_only_when_every_host_condition_holds() -> None:
    def state(revoked: bool, switch: bool, local: bool) -> ResponseState:
        return ResponseState("h", "ws", revoked, "lab", switch, local)

    assert host_refusal(state(False, True, False)) is None
    for revoked, switch, local in [(True, True, False), (False, False, False), (False, True, True)]:
        assert host_refusal(state(revoked, switch, local)) is not None
