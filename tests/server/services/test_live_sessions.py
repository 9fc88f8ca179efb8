"""Live response sessions: who may start and use one, idle expiry, ending on lost access."""

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import ACTIONS, ActionSpec, JobStatus, NoopArgs, NoopResult, Permission, Role
from tether.server.errors import Conflict, Forbidden, NotFound
from tether.server.services.access import ResponseAccess
from tether.server.services.audit import AuditLog
from tether.server.services.dispatch import Dispatcher
from tether.server.services.job_events import JobEvents
from tether.server.services.jobs import Jobs
from tether.server.services.live_sessions import LiveSessions
from tether.server.services.presence import Presence
from tether.server.services.team import Team
from tether.server.services.users import User, Users
from tether.server.store.db import utcnow
from tether.server.store.tables import audit_records, jobs, live_sessions, segments
from tether.server.store.tables import users as users_table

from ..support import FakeClock, FakeLink, add_host

PASSWORD = "a long enough password"


@pytest.fixture(autouse=True)
def respond_action(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        ACTIONS,
        "test.respond",
        ActionSpec(
            name="test.respond",
            args=NoopArgs,
            result=NoopResult,
            permission=Permission.ACTIVE_RESPONSE,
            timeout_seconds=60,
            description="test",
        ),
    )


class Harness:
    def __init__(self, engine: AsyncEngine, audit: AuditLog, users: Users, team: Team) -> None:
        self.engine = engine
        self.audit = audit
        self.users = users
        self.team = team
        self.presence = Presence(engine)
        events = JobEvents()
        access = ResponseAccess(engine)
        self.dispatcher = Dispatcher(engine, audit, self.presence, access, events)
        self.jobs = Jobs(engine, audit, access, self.dispatcher, events)
        # Jobs stamp real time; the session clock starts there and moves only when told.
        self.clock = FakeClock(utcnow())
        self.sessions = LiveSessions(engine, audit, access, self.jobs, clock=self.clock)
        users.on_access_lost(self.sessions.end_for_user)

    async def host(self, name: str, *, segment: str = "ir", enabled: bool = True) -> str:
        host_id = await add_host(self.engine, name, segment=segment)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(segments).where(segments.c.name == segment).values(active_response=enabled)
            )
        return host_id

    async def user(self, name: str, role: Role = Role.SCRIPT, *, mfa: bool = True) -> User:
        created = await self.users.create(name, PASSWORD, {role})
        return replace(created, mfa_verified=mfa)

    async def connect(self, host_id: str) -> FakeLink:
        link = FakeLink(host_id)
        self.presence.attach(link)
        await self.dispatcher.host_connected(link)
        return link

    async def audit_of(self, action: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(audit_records)
                    .where(audit_records.c.action == action)
                    .order_by(audit_records.c.seq)
                )
            ).all()
        return [{"actor": r.actor, "target": r.target, **json.loads(r.details)} for r in rows]


@pytest.fixture
def h(engine: AsyncEngine, audit: AuditLog, users: Users, team: Team) -> Harness:
    return Harness(engine, audit, users, team)


def sent(link: FakeLink, kind: str) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, link.sent) if m["type"] == kind]


async def test_a_started_session_is_open_and_audited(h: Harness) -> None:
    host = await h.host("web-1")
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="10.0.0.5 cli")
    assert (session.open, session.host_id, session.hostname, session.actor) == (
        True,
        host,
        "web-1",
        "rita",
    )
    assert session.commands == 0
    (record,) = await h.audit_of("live_session.start")
    assert record == {
        "actor": "rita",
        "target": f"live_session:{session.id}",
        "host": host,
        "hostname": "web-1",
        "segment": "ir",
    }


async def test_start_is_refused_like_a_response_action(h: Harness) -> None:
    host = await h.host("web-1")
    off = await h.host("db-1", segment="prod", enabled=False)
    with pytest.raises(Forbidden, match="Active Response tier"):
        await h.sessions.start(await h.user("ann", Role.ANALYST), host, source="t")
    with pytest.raises(Forbidden, match="second factor"):
        await h.sessions.start(await h.user("nick", mfa=False), host, source="t")
    with pytest.raises(Forbidden, match="Active Response is off in segment prod"):
        await h.sessions.start(await h.user("rita"), off, source="t")
    with pytest.raises(NotFound, match="No host has the id"):
        await h.sessions.start(await h.user("rob"), "ghost", source="t")
    assert await h.sessions.find(include_ended=True) == []
    assert await h.audit_of("live_session.start") == []


async def test_commands_are_jobs_of_the_session_for_its_owner_only(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    rita, rob = await h.user("rita"), await h.user("rob")
    session = await h.sessions.start(rita, host, source="t")
    h.clock.advance(timedelta(minutes=5))
    job = await h.sessions.command(
        session.id, rita, "test.respond", {"echo": "ls"}, source="t", cwd="/etc"
    )
    assert (job.host_id, job.action, job.created_by) == (host, "test.respond", "rita")
    assert [f["job_id"] for f in sent(link, "job")] == [job.id]
    async with h.engine.connect() as conn:
        linked = (
            await conn.execute(select(jobs.c.session_id).where(jobs.c.id == job.id))
        ).scalar_one()
    assert linked == session.id
    after = await h.sessions.get(session.id)
    assert (after.commands, after.cwd, after.last_activity_at) == (1, "/etc", h.clock.now)
    (submitted,) = await h.audit_of("job.submit")
    assert submitted["session"] == session.id

    with pytest.raises(Forbidden, match="belongs to rita; only they can send commands"):
        await h.sessions.command(session.id, rob, "test.respond", {}, source="t")
    with pytest.raises(Forbidden, match="only they can stop it"):
        await h.sessions.stop(session.id, rob, source="t")
    with pytest.raises(NotFound, match="No live session has the id 'ghost'"):
        await h.sessions.command("ghost", rita, "test.respond", {}, source="t")
    assert (await h.sessions.get(session.id)).commands == 1


async def test_a_session_ends_after_30_quiet_minutes(h: Harness) -> None:
    host = await h.host("web-1")
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="t")
    h.clock.advance(timedelta(minutes=29))
    assert await h.sessions.sweep() == 0
    assert (await h.sessions.get(session.id)).open
    h.clock.advance(timedelta(minutes=2))
    assert await h.sessions.sweep() == 1
    ended = await h.sessions.get(session.id)
    assert (ended.open, ended.end_reason, ended.ended_at) == (
        False,
        "idle for 30 minutes",
        h.clock.now,
    )
    (stop,) = await h.audit_of("live_session.stop")
    assert (stop["actor"], stop["reason"], stop["user"], stop["commands"]) == (
        "platform",
        "idle for 30 minutes",
        "rita",
        0,
    )
    with pytest.raises(Conflict, match=r"has ended \(idle for 30 minutes\); start a new one"):
        await h.sessions.command(session.id, rita, "test.respond", {}, source="t")
    assert await h.sessions.sweep() == 0  # ended once, recorded once
    assert len(await h.audit_of("live_session.stop")) == 1


async def test_a_command_in_an_idle_session_ends_it_even_before_the_sweep(h: Harness) -> None:
    host = await h.host("web-1")
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="t")
    h.clock.advance(timedelta(minutes=31))
    with pytest.raises(Conflict, match="idle for 30 minutes"):
        await h.sessions.command(session.id, rita, "test.respond", {}, source="t")
    assert not (await h.sessions.get(session.id)).open
    async with h.engine.connect() as conn:
        assert (await conn.execute(select(jobs.c.id))).all() == []


async def test_a_running_command_is_not_idleness(h: Harness) -> None:
    host = await h.host("web-1")
    await h.connect(host)
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="t")
    job = await h.sessions.command(session.id, rita, "test.respond", {}, source="t")
    await h.dispatcher.on_status(host, JobStatus(job_id=job.id, state="running"))
    h.clock.advance(timedelta(minutes=45))
    assert await h.sessions.sweep() == 0
    assert (await h.sessions.get(session.id)).open


async def test_the_idle_limit_is_configurable(h: Harness, engine: AsyncEngine) -> None:
    short = LiveSessions(
        engine,
        h.audit,
        ResponseAccess(engine),
        h.jobs,
        idle=timedelta(minutes=5),
        clock=h.clock,
    )
    host = await h.host("web-1")
    session = await short.start(await h.user("rita"), host, source="t")
    h.clock.advance(timedelta(minutes=6))
    assert await short.sweep() == 1
    assert (await short.get(session.id)).end_reason == "idle for 5 minutes"


async def test_stop_records_the_reason_and_the_number_of_commands(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="t")
    done = await h.sessions.command(session.id, rita, "test.respond", {}, source="t")
    await h.dispatcher.on_status(
        host, JobStatus(job_id=done.id, state="succeeded", result={"echo": ""})
    )
    running = await h.sessions.command(session.id, rita, "test.respond", {}, source="t")
    await h.dispatcher.on_status(host, JobStatus(job_id=running.id, state="running"))

    stopped = await h.sessions.stop(session.id, rita, source="t")
    assert (stopped.open, stopped.end_reason, stopped.commands) == (
        False,
        "stopped by the user",
        2,
    )
    (record,) = await h.audit_of("live_session.stop")
    assert (record["actor"], record["reason"], record["commands"], record["cancelled"]) == (
        "rita",
        "stopped by the user",
        2,
        [running.id],
    )
    # The running command is stopped through its agent, the finished one left alone.
    assert [f["job_id"] for f in sent(link, "job.cancel")] == [running.id]
    assert (await h.jobs.get(running.id)).cancel_requested_by == "rita"
    assert (await h.jobs.get(done.id)).state == "succeeded"
    with pytest.raises(Conflict, match="has ended"):
        await h.sessions.stop(session.id, rita, source="t")


async def test_disabling_a_user_ends_their_sessions_and_cancels_their_commands(
    h: Harness,
) -> None:
    web, db = await h.host("web-1"), await h.host("db-1")
    link = await h.connect(web)  # db-1 stays offline: its command waits, unsent
    rita, rob = await h.user("rita"), await h.user("rob")
    first = await h.sessions.start(rita, web, source="t")
    second = await h.sessions.start(rita, db, source="t")
    others = await h.sessions.start(rob, web, source="t")
    running = await h.sessions.command(first.id, rita, "test.respond", {}, source="t")
    await h.dispatcher.on_status(web, JobStatus(job_id=running.id, state="running"))
    pending = await h.sessions.command(second.id, rita, "test.respond", {}, source="t")

    await h.team.set_disabled("rita", True, actor="admin", source="t")

    for session_id in (first.id, second.id):
        ended = await h.sessions.get(session_id)
        assert (ended.open, ended.end_reason) == (False, "the user's access ended (disabled)")
    assert (await h.sessions.get(others.id)).open
    # Pending: withdrawn at once. Running: the agent is told to stop it.
    withdrawn = await h.jobs.get(pending.id)
    assert (withdrawn.state, withdrawn.cancel_requested_by) == ("cancelled", "platform")
    asked = await h.jobs.get(running.id)
    assert (asked.state, asked.cancel_requested_by) == ("running", "platform")
    assert [f["job_id"] for f in sent(link, "job.cancel")] == [running.id]
    stops = await h.audit_of("live_session.stop")
    assert sorted(r["target"] for r in stops) == sorted(
        f"live_session:{i}" for i in (first.id, second.id)
    )
    assert {r["reason"] for r in stops} == {"the user's access ended (disabled)"}
    cancels = await h.audit_of("job.cancel")
    assert {c["target"] for c in cancels} == {f"job:{running.id}", f"job:{pending.id}"}


async def test_losing_the_responder_role_ends_the_session(h: Harness) -> None:
    host = await h.host("web-1")
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="t")
    admin = User(0, "admin", frozenset({"admin"}), False)
    await h.team.revoke_role("rita", Role.SCRIPT, by=admin, source="t")
    ended = await h.sessions.get(session.id)
    assert ended.end_reason == "the user's access ended (active response role removed)"


async def test_a_command_racing_the_end_of_its_session_is_cancelled(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = await h.host("web-1")
    rita = await h.user("rita")
    session = await h.sessions.start(rita, host, source="t")
    submit = h.jobs.submit

    async def submit_while_access_is_lost(*args: Any, **kwargs: Any) -> Any:
        batch = await submit(*args, **kwargs)
        # The end lands after the session check, before the submission returns.
        async with h.engine.begin() as conn:
            await conn.execute(
                update(live_sessions)
                .where(live_sessions.c.id == session.id)
                .values(ended_at=h.clock.now, end_reason="the user's access ended (disabled)")
            )
        return batch

    monkeypatch.setattr(h.jobs, "submit", submit_while_access_is_lost)
    with pytest.raises(Conflict, match="has ended"):
        await h.sessions.command(session.id, rita, "test.respond", {}, source="t")
    async with h.engine.connect() as conn:
        (state,) = (await conn.execute(select(jobs.c.state))).scalars().all()
    assert state == "cancelled"


async def test_find_lists_open_sessions_or_all(h: Harness) -> None:
    host = await h.host("web-1")
    rita, rob = await h.user("rita"), await h.user("rob")
    ended = await h.sessions.start(rita, host, source="t")
    await h.sessions.stop(ended.id, rita, source="t")
    h.clock.advance(timedelta(seconds=1))
    live = await h.sessions.start(rob, host, source="t")
    assert [s.id for s in await h.sessions.find()] == [live.id]
    assert [s.id for s in await h.sessions.find(include_ended=True)] == [live.id, ended.id]


async def test_the_sweep_ends_sessions_of_external_users_whose_access_expired(
    h: Harness, engine: AsyncEngine
) -> None:
    host = await h.host("web-1")
    created = await h.users.create(
        "mdr",
        PASSWORD,
        {Role.SCRIPT},
        external=True,
        organisation="Acme MDR",
        access_expires_at=h.clock.now + timedelta(days=1),
    )
    session = await h.sessions.start(replace(created, mfa_verified=True), host, source="t")
    assert session.actor == "mdr (Acme MDR)"
    h.clock.advance(timedelta(minutes=1))
    assert await h.sessions.sweep() == 0
    async with engine.begin() as conn:
        await conn.execute(
            update(users_table)
            .where(users_table.c.id == created.id)
            .values(access_expires_at=h.clock.now - timedelta(seconds=1))
        )
    assert await h.sessions.sweep() == 1
    ended = await h.sessions.get(session.id)
    assert ended.end_reason == "the user's external access expired"
