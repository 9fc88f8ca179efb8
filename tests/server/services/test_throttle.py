"""Login throttling with a controllable clock: growing delays, the hourly cap, the address cap."""

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Role
from tether.server.auth.sealing import Sealer, new_key
from tether.server.errors import Throttled, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.services.throttle import ThrottlePolicy
from tether.server.services.users import LOGIN_REFUSED, Users
from tether.server.store.tables import login_attempts

from ..conftest import POLICY
from ..support import FakeClock

PASSWORD = "correct horse battery"


async def fail(users: Users, name: str = "alice", address: str = "10.0.0.1") -> str:
    """One wrong-password attempt; returns the answer's message."""
    with pytest.raises((Unauthenticated, Throttled)) as caught:
        await users.login(name, "wrong password!", source=f"{address} curl", client="api")
    return str(caught.value)


async def test_delays_grow_after_five_failures_and_reset_on_success(
    users: Users, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, {Role.ANALYST})
    for _ in range(5):
        assert await fail(users) == LOGIN_REFUSED
        clock.advance(timedelta(milliseconds=10))
    # Five failures: the sixth attempt must wait 1 s, then 2 s after the next failure, and so on.
    for expected_wait in (1, 2, 4, 8):
        with pytest.raises(Throttled) as caught:
            await users.login("alice", PASSWORD, source="10.0.0.1 x", client="api")
        assert caught.value.retry_after == expected_wait
        unit = "second" if expected_wait == 1 else "seconds"
        assert str(caught.value) == f"Too many failed logins; try again in {expected_wait} {unit}."
        clock.advance(timedelta(seconds=expected_wait))
        assert await fail(users) == LOGIN_REFUSED
    clock.advance(timedelta(seconds=16))
    await users.login("alice", PASSWORD, source="10.0.0.1 x", client="api")
    # Success resets the run of failures.
    assert await fail(users) == LOGIN_REFUSED


async def test_unknown_names_are_throttled_exactly_like_real_ones(
    users: Users, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, {Role.ANALYST})
    answers: dict[str, list[str]] = {"alice": [], "nobody": []}
    for name in answers:
        for _ in range(7):
            answers[name].append(await fail(users, name))
            clock.advance(timedelta(milliseconds=100))
    assert answers["alice"] == answers["nobody"]
    assert answers["alice"][5].startswith("Too many failed logins")


def without_delays(users: Users, audit: AuditLog, clock: FakeClock) -> Users:
    """The same users with the growing delay switched off, to see the hard caps alone."""
    return Users(
        users._engine,
        audit,
        POLICY,
        clock=clock,
        sealer=Sealer(new_key()),
        throttle=ThrottlePolicy(free_failures=10_000),
    )


async def test_at_most_100_failures_per_account_per_hour(
    users: Users, audit: AuditLog, clock: FakeClock
) -> None:
    plain = without_delays(users, audit, clock)
    await plain.create("alice", PASSWORD, {Role.ANALYST})
    start = clock.now
    for i in range(100):
        # From many addresses, so only the account cap can bite.
        assert await fail(plain, address=f"10.1.{i}.1") == LOGIN_REFUSED
        clock.advance(timedelta(seconds=30))
    # 100 failures in 50 minutes: refused, even with the right password, until the first
    # failure is an hour old.
    with pytest.raises(Throttled) as caught:
        await plain.login("alice", PASSWORD, source="10.2.0.1 x", client="api")
    assert caught.value.retry_after == 10 * 60
    clock.now = start + timedelta(hours=1, seconds=1)
    session = await plain.login("alice", PASSWORD, source="10.2.0.1 x", client="api")
    assert session.user.username == "alice"


async def test_one_address_failing_across_accounts_is_throttled(
    users: Users, audit: AuditLog, clock: FakeClock
) -> None:
    plain = without_delays(users, audit, clock)
    await plain.create("alice", PASSWORD, {Role.ANALYST})
    for i in range(100):
        assert await fail(plain, name=f"user{i}", address="192.0.2.7") == LOGIN_REFUSED
        clock.advance(timedelta(seconds=1))
    with pytest.raises(Throttled) as caught:
        await plain.login("alice", PASSWORD, source="192.0.2.7 x", client="api")
    assert caught.value.retry_after == 15 * 60 - 100  # until the first failure leaves the window
    # Another address is not affected.
    await plain.login("alice", PASSWORD, source="192.0.2.8 x", client="api")


async def test_every_attempt_is_audited_with_address_and_client(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    await users.create("alice", PASSWORD, {Role.ANALYST})
    for _ in range(6):
        await fail(users)
    records = [r async for r in audit.iter_records() if r.action == "auth.login"]
    assert len(records) == 6
    assert [r.to_json()["details"]["reason"] for r in records] == ["password"] * 5 + ["throttled"]
    assert all(r.source == "10.0.0.1 curl" for r in records)
    assert all(r.to_json()["details"]["client"] == "api" for r in records)


async def test_old_attempts_are_purged(users: Users, clock: FakeClock, engine: AsyncEngine) -> None:
    for _ in range(3):
        await fail(users)
    clock.advance(timedelta(minutes=59))
    await fail(users, name="bob")
    await users.purge_expired_sessions()
    async with engine.connect() as conn:
        assert len((await conn.execute(select(login_attempts))).all()) == 4
    clock.advance(timedelta(minutes=2))
    await users.purge_expired_sessions()
    async with engine.connect() as conn:
        left = (await conn.execute(select(login_attempts.c.username))).scalars().all()
    assert left == ["bob"]
