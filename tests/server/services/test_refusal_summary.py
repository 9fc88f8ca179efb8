"""Refusals of unauthenticated clients summarized per source per minute: a flood cannot grow the
audit chain without bound, and what the attacker typed arrives bounded and printable."""

from datetime import timedelta

import pytest

from tether.protocol import Role
from tether.server.errors import Throttled, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.services.client_text import untrusted_text
from tether.server.services.refusal_summary import (
    MAX_ACCOUNTS,
    MAX_SOURCES,
    OTHER_SOURCES,
    RefusalSummary,
)
from tether.server.services.users import LOGIN_FAILURES, Users

from ..support import FakeClock

PASSWORD = "correct horse battery"


async def count_records(audit: AuditLog) -> int:
    return len([r async for r in audit.iter_records()])


async def test_a_flood_of_failed_logins_from_one_source_is_one_record_a_minute(
    users: Users, audit: AuditLog, clock: FakeClock
) -> None:
    await users.create("admin", PASSWORD, {Role.ADMIN})
    before = await count_records(audit)
    hostile_agent = "curl\x1b[31m\nFORGED RECORD\r" + "A" * 500
    # Issue 13's attacker: 500 attempts in 7 s, with a user agent of its choosing.
    for i in range(500):
        name = "admin" if i % 2 else f"user{i}\x00\u202e" + "x" * 300
        with pytest.raises((Unauthenticated, Throttled)):
            await users.login(
                name, "wrong password!", source=f"198.51.100.4 {hostile_agent}", client="api"
            )
        clock.advance(timedelta(milliseconds=14))
    clock.advance(timedelta(minutes=1))
    await users.login_failures.flush()
    after = [r async for r in audit.iter_records()][before:]
    assert [r.action for r in after] == [LOGIN_FAILURES]
    summary = after[0].to_json()
    assert summary["target"] == "198.51.100.4"
    assert summary["details"]["count"] == 500
    accounts = summary["details"]["accounts"]
    assert len(accounts) == MAX_ACCOUNTS
    assert summary["details"]["more_accounts"] == 250 - (MAX_ACCOUNTS - 1)
    assert all(len(a) <= 64 and a.isprintable() for a in accounts)
    assert accounts[1] == "admin"
    assert summary["source"].isprintable()
    assert len(summary["source"]) <= len("198.51.100.4 ") + 64
    assert "\n" not in summary["source"]
    assert "\x1b" not in summary["source"]
    assert (await audit.verify()).intact


async def test_a_source_gets_a_new_record_each_minute_it_keeps_failing(
    audit: AuditLog, clock: FakeClock
) -> None:
    summary = RefusalSummary(audit, "agent.tls_refused", clock)
    # Refused once a second for two minutes, flushed as often as the platform's flusher.
    for _ in range(120):
        summary.note("192.0.2.1", "no client certificate")
        clock.advance(timedelta(seconds=1))
        await summary.flush()
    records = [r.to_json() async for r in audit.iter_records()]
    assert [r["details"]["count"] for r in records] == [60, 60]
    assert records[0]["details"]["reasons"] == {"no client certificate": 60}
    assert records[0]["actor"] == "unauthenticated"
    assert summary.totals == {"no client certificate": 120}
    summary.note("192.0.2.1", "handshake timeout")
    await summary.flush(everything=True)  # what a clean stop does
    assert len([r async for r in audit.iter_records()]) == 3


async def test_sources_beyond_the_bound_share_one_record(audit: AuditLog, clock: FakeClock) -> None:
    summary = RefusalSummary(audit, "agent.tls_refused", clock)
    for i in range(MAX_SOURCES + 50):
        summary.note(f"2001:db8::{i:x}", "certificate not accepted")
    clock.advance(timedelta(minutes=1))
    assert await summary.flush() == MAX_SOURCES + 1
    shared = [r.to_json() async for r in audit.iter_records() if r.target == OTHER_SOURCES]
    assert [(r["details"]["count"], r["details"]["sources"]) for r in shared] == [(50, 50)]
    assert shared[0]["details"]["sources_at_least"] is False


def test_untrusted_text_is_printable_and_bounded() -> None:
    assert untrusted_text("ok\x07\tname\u200b", limit=64) == "ok??name?"
    assert untrusted_text("x" * 100, limit=10) == "x" * 10
