"""The few-seconds cache of what authentication read (docs/adr/0053).

The attacker's side: after a logout, an ended session, a disabled account, a role taken away or
given, a second factor reset or an access setting changed, the very next request is refused or
re-evaluated, in this process and (over the bus) in another; only a change written where no
message reaches (a lost message, another command) waits for the TTL.
"""

import asyncio

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Permission, Role
from tether.server.auth.sealing import Sealer
from tether.server.errors import SecondFactorRequired, Unauthenticated
from tether.server.services.access_settings import AccessSettings, AccessSettingsStore
from tether.server.services.audit import AuditLog
from tether.server.services.buses.redis import RedisBus
from tether.server.services.session_cache import SessionCache
from tether.server.services.team import Team
from tether.server.services.user_sessions import ID_LENGTH, UserSessions
from tether.server.services.users import CachedSession, User, Users
from tether.server.store.tables import sessions

from ..conftest import POLICY
from ..support import FakeClock

PASSWORD = "correct horse battery"


class Ticks:
    """A monotonic clock for the cache that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def users(
    engine: AsyncEngine, audit: AuditLog, clock: FakeClock, sealer: Sealer, ticks: Ticks
) -> Users:
    return Users(engine, audit, POLICY, clock=clock, sealer=sealer, cache=SessionCache(2.0, ticks))


async def _analyst(users: Users, name: str = "ann") -> str:
    await users.create(name, PASSWORD, {Role.ANALYST})
    return (await users.login(name, PASSWORD, source="s", client="cli")).token


def acting(name: str) -> User:
    """The admin making a change, as the routes hand it to the team service."""
    return User(0, name, frozenset({Role.ADMIN.value}), False, mfa_verified=True)


async def test_a_session_is_read_once_within_the_ttl_and_again_after_it(
    users: Users, engine: AsyncEngine, ticks: Ticks
) -> None:
    token = await _analyst(users)
    assert (await users.authenticate(token)).username == "ann"
    assert len(users.cache) == 1
    # Revoked behind the platform's back (no process told): the cache admits it until the TTL...
    async with engine.begin() as conn:
        await conn.execute(update(sessions).values(revoked_at=users.now()))
    assert (await users.authenticate(token)).username == "ann"
    # ...and not a moment after.
    ticks.now += 2.0
    with pytest.raises(Unauthenticated, match="not valid"):
        await users.authenticate(token)


async def test_the_request_after_a_logout_is_refused(users: Users) -> None:
    token = await _analyst(users)
    user = await users.authenticate(token)
    await users.logout(token, user, source="s")
    with pytest.raises(Unauthenticated, match="not valid"):
        await users.authenticate(token)


async def test_the_request_after_a_session_is_ended_is_refused(
    users: Users, engine: AsyncEngine, audit: AuditLog
) -> None:
    token = await _analyst(users)
    other = (await users.login("ann", PASSWORD, source="s", client="web")).token
    user = await users.authenticate(other)
    victim = await users.authenticate(token)
    ended = UserSessions(engine, audit, users.now, on_change=users.forget_user)
    await ended.end("ann", victim.session_hash[:ID_LENGTH], by=user, source="s")
    with pytest.raises(Unauthenticated, match="not valid"):
        await users.authenticate(token)
    assert (await users.authenticate(other)).username == "ann"


async def test_the_request_after_disabling_is_refused(users: Users, team: Team) -> None:
    token = await _analyst(users)
    await users.authenticate(token)
    await team.set_disabled("ann", True, actor="admin", source="s")
    with pytest.raises(Unauthenticated):
        await users.authenticate(token)


async def test_roles_taken_or_given_count_from_the_next_request(users: Users, team: Team) -> None:
    token = await _analyst(users)
    assert Permission.HOSTS_READ in (await users.authenticate(token)).permissions
    await team.revoke_role("ann", Role.ANALYST, by=acting("admin"), source="s")
    assert Permission.HOSTS_READ not in (await users.authenticate(token)).permissions
    # Given the admin role, the session now needs the second factor it never passed.
    await team.grant_role("ann", Role.ADMIN, by=acting("admin"), source="s")
    with pytest.raises(SecondFactorRequired):
        await users.authenticate(token)


async def test_the_request_after_a_second_factor_reset_is_refused(users: Users, team: Team) -> None:
    token = await _analyst(users)
    await users.authenticate(token)
    await team.reset_mfa("ann", by=acting("admin"), source="s")
    with pytest.raises(Unauthenticated):
        await users.authenticate(token)


async def test_the_request_after_external_access_is_suspended_is_refused(
    users: Users, team: Team, engine: AsyncEngine, audit: AuditLog
) -> None:
    await users.create("mdr", PASSWORD, {Role.ANALYST}, external=True, organisation="Provider Ltd")
    token = (await users.login("mdr", PASSWORD, source="s", client="cli")).token
    await users.authenticate(token)
    # Only the setting, not the session ends the team would also do: the cache must not hide it.
    store = AccessSettingsStore(engine, audit, _nothing, on_change=users.forget_everyone)
    await store.update({"external_access_suspended": True}, actor="admin", source="s")
    with pytest.raises(Unauthenticated, match="suspended"):
        await users.authenticate(token)


async def _nothing(actor: str, source: str) -> None:
    return None


async def test_a_read_under_way_during_a_change_is_not_kept(users: Users) -> None:
    token = await _analyst(users)
    user = await users.authenticate(token)
    users.cache.forget_all()
    generation = users.cache.generation
    users.cache.forget_user(user.id)  # a change lands while a read is under way
    stale = CachedSession(
        user_id=user.id,
        stage="full",
        last_used_at=users.now(),
        expires_at=users.now(),
        mfa_verified=False,
        mfa_verified_at=None,
        user=user,
        settings=AccessSettings(),
    )
    users.cache.put(user.session_hash, user.id, stale, generation)
    assert users.cache.get(user.session_hash) is None


async def test_another_process_forgets_at_once_over_the_bus(
    engine: AsyncEngine,
    audit: AuditLog,
    clock: FakeClock,
    sealer: Sealer,
    redis_url: str,
    bus_prefix: str,
) -> None:
    # Two platform processes on one database: the api serving the analyst, and another where an
    # admin disables the account.
    here_bus, there_bus = (
        RedisBus(redis_url, prefix=bus_prefix),
        RedisBus(redis_url, prefix=bus_prefix),
    )
    here = Users(engine, audit, POLICY, clock=clock, sealer=sealer, bus=here_bus)
    there = Users(engine, audit, POLICY, clock=clock, sealer=sealer, bus=there_bus)
    await here_bus.start()
    await there_bus.start()
    try:
        token = await _analyst(here)
        await here.authenticate(token)
        assert len(here.cache) == 1
        await Team(engine, audit, there).set_disabled("ann", True, actor="admin", source="s")
        for _ in range(100):
            if len(here.cache) == 0:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(Unauthenticated):
            await here.authenticate(token)
    finally:
        await here_bus.close()
        await there_bus.close()
