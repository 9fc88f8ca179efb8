"""Accounts, logins (each audited, one answer for every failure) and server-side sessions."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Permission, Role
from tether.server.auth.tokens import token_hash
from tether.server.errors import Conflict, Invalid, Unauthenticated
from tether.server.services.audit import AuditLog, AuditRecord
from tether.server.services.users import LOGIN_REFUSED, Users
from tether.server.store.tables import sessions
from tether.server.store.tables import users as users_table

from ..support import FakeClock

PASSWORD = "correct horse battery"


async def records(audit: AuditLog) -> list[AuditRecord]:
    return [r async for r in audit.iter_records()]


async def test_create_user(users: Users, engine: AsyncEngine) -> None:
    user = await users.create("alice", PASSWORD, {Role.ADMIN})
    assert user.username == "alice"
    assert user.roles == frozenset({"admin"})
    assert Permission.USERS_MANAGE in user.permissions
    # The audit log is for the Active Response role alone.
    assert Permission.AUDIT_READ not in user.permissions
    async with engine.connect() as conn:
        stored = (await conn.execute(select(users_table.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


@pytest.mark.parametrize(
    "username",
    ["", "-leading-dash", ".dot", "has space", "a" * 65, "semi;colon", "ünï", "trailing-newline\n"],
)
async def test_bad_username_is_refused(users: Users, username: str) -> None:
    with pytest.raises(Invalid, match="A username is 1 to 64"):
        await users.create(username, PASSWORD, set())


async def test_short_password_is_refused(users: Users) -> None:
    with pytest.raises(Invalid, match="at least 12 characters"):
        await users.create("bob", "x" * 11, set())


async def test_duplicate_username_is_a_conflict(users: Users) -> None:
    await users.create("carol", PASSWORD, set())
    with pytest.raises(Conflict, match="'carol' already exists"):
        await users.create("carol", PASSWORD + "2", {Role.ADMIN})


async def test_login_opens_a_session_and_is_audited(
    users: Users, audit: AuditLog, engine: AsyncEngine, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, {Role.ADMIN})
    session = await users.login("alice", PASSWORD, source="10.0.0.1 cli", client="cli")
    assert session.user.username == "alice"
    assert session.expires_at == clock.now + timedelta(hours=12)
    assert (await users.authenticate(session.token)).username == "alice"
    async with engine.connect() as conn:
        stored = (await conn.execute(select(sessions.c.token_hash))).scalars().all()
    assert stored == [token_hash(session.token)]  # the token itself is never stored
    last = (await records(audit))[-1]
    assert (last.action, last.actor, last.outcome, last.source) == (
        "auth.login",
        "alice",
        "success",
        "10.0.0.1 cli",
    )
    assert last.to_json()["details"] == {"client": "cli", "factor": "password", "next": "full"}


async def test_every_login_failure_gives_the_same_answer_and_is_audited(
    users: Users, audit: AuditLog, engine: AsyncEngine
) -> None:
    await users.create("alice", PASSWORD, {Role.ADMIN})
    await users.create("dave", PASSWORD, {Role.ADMIN})
    async with engine.begin() as conn:
        await conn.execute(
            update(users_table).where(users_table.c.username == "dave").values(disabled=True)
        )
    attempts = [("nobody", PASSWORD), ("alice", "wrong password!"), ("dave", PASSWORD)]
    messages = []
    for username, password in attempts:
        with pytest.raises(Unauthenticated) as caught:
            await users.login(username, password, source="10.0.0.9 x", client="api")
        messages.append(str(caught.value))
    assert messages == [LOGIN_REFUSED] * 3
    # Summarized per source (ADR 0026): one record with every reason, written on the flush.
    await users.login_failures.flush(everything=True)
    failures = [r for r in await records(audit) if r.action.startswith("auth.login")]
    assert [(r.action, r.actor, r.outcome, r.source) for r in failures] == [
        ("auth.login.failures", "unauthenticated", "failure", "10.0.0.9 x")
    ]
    details = failures[0].to_json()["details"]
    assert details["accounts"] == ["nobody", "alice", "dave"]
    assert details["reasons"] == {
        "disabled via api": 1,
        "password via api": 1,
        "unknown user via api": 1,
    }
    assert (await audit.verify()).intact


async def test_unknown_token_is_refused(users: Users) -> None:
    with pytest.raises(Unauthenticated, match="not valid"):
        await users.authenticate("made-up-token")


async def test_idle_session_expires(users: Users, clock: FakeClock) -> None:
    await users.create("alice", PASSWORD, set())
    session = await users.login("alice", PASSWORD, source="s", client="cli")
    clock.advance(timedelta(minutes=29, seconds=59))
    await users.authenticate(session.token)  # in time, and refreshes the idle timer
    clock.advance(timedelta(minutes=29, seconds=59))
    await users.authenticate(session.token)
    clock.advance(timedelta(minutes=30))
    with pytest.raises(Unauthenticated, match="expired"):
        await users.authenticate(session.token)


async def test_idle_timer_is_not_refreshed_more_than_once_a_minute(
    users: Users, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, set())
    session = await users.login("alice", PASSWORD, source="s", client="cli")
    clock.advance(timedelta(seconds=30))
    await users.authenticate(session.token)  # too soon to write a refresh
    clock.advance(timedelta(minutes=29, seconds=30))
    with pytest.raises(Unauthenticated, match="expired"):
        await users.authenticate(session.token)


async def test_session_ends_at_its_absolute_lifetime_even_when_busy(
    users: Users, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, set())
    session = await users.login("alice", PASSWORD, source="s", client="cli")
    for _ in range(35):  # every 20 minutes for 11 h 40 min
        clock.advance(timedelta(minutes=20))
        await users.authenticate(session.token)
    clock.advance(timedelta(minutes=20))  # 12 h after login
    with pytest.raises(Unauthenticated, match="expired"):
        await users.authenticate(session.token)


async def test_logout_revokes_the_session(users: Users, audit: AuditLog) -> None:
    user = await users.create("alice", PASSWORD, set())
    session = await users.login("alice", PASSWORD, source="s", client="cli")
    other = await users.login("alice", PASSWORD, source="s", client="ui")
    await users.logout(session.token, user, source="s")
    with pytest.raises(Unauthenticated, match="not valid"):
        await users.authenticate(session.token)
    assert (await users.authenticate(other.token)).username == "alice"
    last = (await records(audit))[-1]
    assert (last.action, last.actor) == ("auth.logout", "alice")


async def test_disabling_a_user_ends_their_sessions(users: Users, engine: AsyncEngine) -> None:
    await users.create("alice", PASSWORD, set())
    session = await users.login("alice", PASSWORD, source="s", client="cli")
    async with engine.begin() as conn:
        await conn.execute(update(users_table).values(disabled=True))
    with pytest.raises(Unauthenticated, match="disabled"):
        await users.authenticate(session.token)


async def test_purge_removes_expired_sessions_only(
    users: Users, engine: AsyncEngine, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, set())
    await users.login("alice", PASSWORD, source="s", client="cli")
    clock.advance(timedelta(hours=6))
    fresh = await users.login("alice", PASSWORD, source="s", client="cli")
    clock.advance(timedelta(hours=7))
    await users.purge_expired_sessions()
    async with engine.connect() as conn:
        left = (await conn.execute(select(sessions.c.token_hash))).scalars().all()
    assert left == [token_hash(fresh.token)]
