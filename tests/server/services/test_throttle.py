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
from tether.server.services.users import LOGIN_FAILURES, LOGIN_REFUSED, Users
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


async def test_an_attacker_elsewhere_cannot_keep_the_user_out(
    users: Users, clock: FakeClock
) -> None:
    await users.create("alice", PASSWORD, {Role.ANALYST})
    # One wrong password per delay, as the attacker of issue 13 did: it throttles only itself.
    answers = []
    for _ in range(12):
        answers.append(await fail(users, address="203.0.113.9"))
        clock.advance(timedelta(milliseconds=200))
    assert answers[:5] == [LOGIN_REFUSED] * 5
    assert answers[5] == "Too many failed logins; try again in 1 second."
    session = await users.login("alice", PASSWORD, source="10.0.0.1 browser", client="web")
    assert session.user.username == "alice"


async def test_at_most_100_failures_per_account_per_hour_and_known_sources_keep_a_share(
    users: Users, audit: AuditLog, clock: FakeClock
) -> None:
    plain = without_delays(users, audit, clock)
    await plain.create("alice", PASSWORD, {Role.ANALYST})
    # alice logged in from her workstation yesterday: that address is one of her known sources.
    await plain.login("alice", PASSWORD, source="10.0.0.1 x", client="api")
    clock.advance(timedelta(days=1))
    start = clock.now
    for i in range(90):
        # From many addresses, so only the account cap can bite.
        assert await fail(plain, address=f"10.1.{i}.1") == LOGIN_REFUSED
        clock.advance(timedelta(seconds=30))
    # 90 failures from addresses alice never logged in from: every such address is refused,
    # even with the right password, until the first failure is an hour old...
    with pytest.raises(Throttled) as caught:
        await plain.login("alice", PASSWORD, source="10.2.0.1 x", client="api")
    assert caught.value.retry_after == 15 * 60
    # ...but alice, at her known source, still gets in.
    session = await plain.login("alice", PASSWORD, source="10.0.0.1 x", client="api")
    assert session.user.username == "alice"
    # Known sources share the last 10 of the 100: ASVS's cap holds for all sources together.
    for _ in range(10):
        assert await fail(plain, address="10.0.0.1") == LOGIN_REFUSED
    with pytest.raises(Throttled):
        await plain.login("alice", PASSWORD, source="10.0.0.1 x", client="api")
    async with plain._engine.connect() as conn:
        failures = (
            await conn.execute(
                select(login_attempts.c.id).where(login_attempts.c.success.is_(False))
            )
        ).all()
    assert len(failures) == 100
    clock.now = start + timedelta(hours=1, seconds=1)
    session = await plain.login("alice", PASSWORD, source="10.2.0.1 x", client="api")
    assert session.user.username == "alice"


async def test_a_failure_stays_in_the_budget_it_was_counted_in(
    users: Users, audit: AuditLog, clock: FakeClock
) -> None:
    """An address that logs in after failing does not move its failures out of the budget for
    unknown sources (which would make room for more than 100 in the hour)."""
    plain = without_delays(users, audit, clock)
    await plain.create("alice", PASSWORD, {Role.ANALYST})
    for i in range(85):
        await fail(plain, address=f"10.1.{i}.1")
        clock.advance(timedelta(seconds=1))
    for _ in range(4):
        await fail(plain, address="10.9.9.9")
        clock.advance(timedelta(seconds=1))
    # 89 of the 90 failures unknown sources may have; then 10.9.9.9 gets the password right.
    await plain.login("alice", PASSWORD, source="10.9.9.9 x", client="api")
    assert await fail(plain, address="10.3.0.1") == LOGIN_REFUSED
    with pytest.raises(Throttled):
        await plain.login("alice", PASSWORD, source="10.2.0.1 x", client="api")


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


async def test_failures_are_summarized_per_source_and_successes_recorded_each(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    await users.create("alice", PASSWORD, {Role.ANALYST})
    for _ in range(6):
        await fail(users)
    await fail(users, name="bob", address="10.0.0.2")
    assert [r async for r in audit.iter_records() if r.action == LOGIN_FAILURES] == []
    assert await users.login_failures.flush() == 0  # not a minute old yet
    clock.advance(timedelta(minutes=1))
    await users.login("alice", PASSWORD, source="10.0.0.3 firefox", client="web")
    assert await users.login_failures.flush() == 2
    records = [r async for r in audit.iter_records() if r.action.startswith("auth.login")]
    summaries = {r.target: r for r in records if r.action == LOGIN_FAILURES}
    first = summaries["10.0.0.1"]
    assert (first.actor, first.outcome, first.source) == (
        "unauthenticated",
        "failure",
        "10.0.0.1 curl",
    )
    details = first.to_json()["details"]
    assert details["count"] == 6
    assert details["accounts"] == ["alice"]
    assert details["reasons"] == {"password via api": 5, "throttled (password) via api": 1}
    assert summaries["10.0.0.2"].to_json()["details"]["reasons"] == {"unknown user via api": 1}
    successes = [r for r in records if r.action == "auth.login"]
    assert [(s.actor, s.outcome, s.source) for s in successes] == [
        ("alice", "success", "10.0.0.3 firefox")
    ]


async def test_old_attempts_are_purged(users: Users, clock: FakeClock, engine: AsyncEngine) -> None:
    await users.create("alice", PASSWORD, {Role.ANALYST})
    await users.login("alice", PASSWORD, source="10.0.0.1 x", client="api")
    for _ in range(3):
        await fail(users)
    clock.advance(timedelta(minutes=59))
    await fail(users, name="bob")
    await users.purge_expired_sessions()
    async with engine.connect() as conn:
        assert len((await conn.execute(select(login_attempts))).all()) == 5
    clock.advance(timedelta(minutes=2))
    await users.purge_expired_sessions()

    async def left() -> list[str]:
        async with engine.connect() as conn:
            return list((await conn.execute(select(login_attempts.c.username))).scalars().all())

    # Failures go after an hour; a success stays while it can make its source known (30 days).
    assert sorted(await left()) == ["alice", "bob"]
    clock.advance(timedelta(days=30, hours=2))
    await users.purge_expired_sessions()
    assert await left() == []
