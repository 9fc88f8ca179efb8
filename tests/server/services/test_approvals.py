"""Four-eyes approval (docs/adr/0039): what waits, who may decide, and how requests end."""

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import AWAITING_APPROVAL, Approval, Tier
from tether.server.errors import Conflict, Forbidden, Invalid
from tether.server.services.approvals import Approvals
from tether.server.services.audit import AuditLog
from tether.server.services.jobs import Selection
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.services.segments import Segments
from tether.server.services.service_tokens import ServiceTokens
from tether.server.services.users import User
from tether.server.store.db import utcnow
from tether.server.store.tables import approvals, audit_records, jobs, segments

from .test_jobs import Harness, frames
from .test_team import acting

RITA = User(1, "rita", frozenset({"respond"}), False, mfa_verified=True)
# Rita again, from a second session (another browser, the CLI): the same person.
RITA_AGAIN = User(1, "rita", frozenset({"respond"}), False, mfa_verified=True, session_hash="b")
SAM = User(2, "sam", frozenset({"script"}), False, mfa_verified=True)
COLIN = User(3, "colin", frozenset({"collect"}), False, mfa_verified=True)
RON = User(4, "ron", frozenset({"respond"}), False, mfa_verified=True)
SAM_NO_MFA = User(2, "sam", frozenset({"script"}), False, mfa_verified=False)
SOAR = User(
    -1,
    "service:soar",
    frozenset({"script"}),
    False,
    mfa_verified=True,
    segments=frozenset({"ir"}),
    service=True,
)
KILL = ("processes.kill", {"pid": 4242})
SCRIPT = ("script.run", {"source": "print('hi')", "params": {}})


class Four(Harness):
    def __init__(self, engine: AsyncEngine, audit: AuditLog) -> None:
        super().__init__(engine, audit)
        self.approvals = Approvals(engine, audit, self.dispatcher, self.events)
        self.dispatcher.on_sweep(self.approvals.expire_overdue)
        self.segments = Segments(engine, audit, PolicyDelivery(engine, Presence(engine)))

    async def approval(self, segment: str, setting: Approval, timeout: int | None = None) -> None:
        await self.segments.set_approval(segment, setting, timeout, actor="adam", source="t")

    async def ask(self, host_ids: list[str], who: User = RITA, what: Any = KILL) -> Any:
        action, args = what
        return await self.jobs.submit(
            who, action, args, Selection(host_ids=host_ids), source="test"
        )


@pytest.fixture
def h(engine: AsyncEngine, audit: AuditLog) -> Four:
    return Four(engine, audit)


async def chain(engine: AsyncEngine, prefix: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(audit_records)
            .where(audit_records.c.action.like(prefix + "%"))
            .order_by(audit_records.c.seq)
        )
        return list(rows)


async def test_a_respond_action_waits_unsent_and_runs_once_another_person_approves(
    h: Four, engine: AsyncEngine, audit: AuditLog
) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.RESPOND)
    link = await h.connect(host)
    batch = await h.ask([host])
    (job,) = batch.jobs
    assert job.state == AWAITING_APPROVAL
    assert batch.notice == (
        "Segment ir needs a second person's approval for respond and script actions; "
        f"job {job.id} is awaiting approval."
    )
    # Never sent while waiting, also not at a reconnect.
    assert frames(link, "job") == []
    await h.dispatcher.host_connected(link)
    assert frames(link, "job") == []
    (pending,) = await h.approvals.pending()
    assert (pending.requested_by, pending.tier, pending.waiting) == ("rita", "respond", 1)

    decided = await h.approvals.approve(job.id, RON, reason="seen the alert", source="t")
    assert (decided.state, decided.decided_by, decided.reason) == (
        "approved",
        "ron",
        "seen the alert",
    )
    (sent,) = frames(link, "job")
    assert sent["job_id"] == job.id
    after = await h.jobs.get(job.id)
    assert after.state == "queued"
    assert after.approval is not None
    assert after.approval.decided_by == "ron"
    # The offline queue starts at approval: the job keeps its whole time to live.
    assert after.expires_at - utcnow() > timedelta(days=6, hours=23)
    assert await h.approvals.pending() == []
    asked, approved = await chain(engine, "job.approv"), await chain(engine, "job.approve")
    assert [r.action for r in asked] == ["job.approval.request", "job.approve"]
    assert (approved[0].actor, approved[0].target) == ("ron", f"batch:{job.batch_id}")
    assert (await audit.verify()).intact


async def test_nobody_approves_their_own_request_nor_from_a_second_session(h: Four) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.RESPOND)
    (job,) = (await h.ask([host])).jobs
    for same_person in (RITA, RITA_AGAIN):
        with pytest.raises(Forbidden, match=r"rita requested job .*; a different person must"):
            await h.approvals.approve(job.id, same_person, reason=None, source="t")
    assert await h.approvals.pending_for(RITA_AGAIN) == []
    assert len(await h.approvals.pending_for(RON)) == 1
    assert (await h.jobs.get(job.id)).state == AWAITING_APPROVAL


async def test_a_lower_tier_a_service_token_and_no_second_factor_cannot_approve(
    h: Four, engine: AsyncEngine
) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.RESPOND)
    (job,) = (await h.ask([host], who=SAM, what=SCRIPT)).jobs
    with pytest.raises(
        Forbidden,
        match=f"rita has the respond tier; approving or rejecting job {job.id} needs script",
    ):
        await h.approvals.approve(job.id, RITA, reason=None, source="t")
    with pytest.raises(Forbidden, match="colin has the collect tier"):
        await h.approvals.reject(job.id, COLIN, reason="no", source="t")
    with pytest.raises(Forbidden, match="service:soar is a service token; only a person"):
        await h.approvals.approve(job.id, SOAR, reason=None, source="t")
    with pytest.raises(Forbidden, match="second factor"):
        await h.approvals.approve(
            job.id, User(9, "x", frozenset({"script"}), False), reason=None, source="t"
        )
    refused = await chain(engine, "job.approval.refused")
    assert [r.actor for r in refused] == ["rita", "colin", "service:soar", "x"]
    assert (await h.jobs.get(job.id)).state == AWAITING_APPROVAL


async def test_rejected_requests_end_with_who_and_why(h: Four, engine: AsyncEngine) -> None:
    one, two = await h.host("web-1"), await h.host("web-2")
    await h.approval("ir", Approval.RESPOND)
    batch = await h.ask([one, two])
    with pytest.raises(Invalid, match="a reason is required"):
        await h.approvals.reject(batch.jobs[0].id, RON, reason="  ", source="t")
    decided = await h.approvals.reject(batch.jobs[0].id, RON, reason="wrong host", source="t")
    assert (decided.state, decided.decided_by, decided.reason) == ("rejected", "ron", "wrong host")
    # One decision per request: both jobs of the batch end with it.
    for job in (await h.jobs.batch(batch.id)).jobs:
        assert (job.state, job.error) == ("rejected", "Rejected by ron: wrong host")
        assert job.outcome_seq is not None
    with pytest.raises(Conflict, match="already rejected by ron"):
        await h.approvals.approve(batch.jobs[0].id, SAM, reason=None, source="t")
    (record,) = await chain(engine, "job.reject")
    assert (record.actor, '"reason":"wrong host"' in record.details) == ("ron", True)


async def test_a_request_nobody_decides_in_time_expires_with_the_reason(h: Four) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.RESPOND, timeout=3600)
    (job,) = (await h.ask([host])).jobs
    assert await h.dispatcher.sweep(utcnow() + timedelta(minutes=59)) == 0
    assert await h.dispatcher.sweep(utcnow() + timedelta(minutes=61)) == 1
    ended = await h.jobs.get(job.id)
    assert ended.state == "expired"
    assert ended.error == (
        "Nobody approved it within 1 hour of the request by rita, so the request expired."
    )
    assert ended.approval is not None
    assert ended.approval.state == "expired"
    with pytest.raises(Conflict, match="already expired"):
        await h.approvals.approve(job.id, RON, reason=None, source="t")


async def test_what_waits_follows_the_setting_and_the_actions_tier(h: Four) -> None:
    web, db = await h.host("web-1"), await h.host("db-1", segment="prod")
    await h.approval("ir", Approval.SCRIPT)
    # Script-only approval: a kill goes at once, a script waits; collect never waits.
    assert (await h.ask([web])).jobs[0].state == "queued"
    assert (await h.ask([web], who=SAM, what=SCRIPT)).jobs[0].state == AWAITING_APPROVAL
    assert (await h.ask([web], what=("processes.list", {}))).jobs[0].state == "queued"
    # A selection over two segments: only the host in the approval segment waits.
    mixed = await h.ask([web, db], who=SAM, what=SCRIPT)
    states = {j.hostname: j.state for j in mixed.jobs}
    assert states == {"web-1": AWAITING_APPROVAL, "db-1": "queued"}


async def test_a_live_session_command_needing_approval_is_refused_with_the_way_out(
    h: Four,
) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.SCRIPT)
    with pytest.raises(
        Forbidden, match="which a live-session command cannot wait for; submit it as a job"
    ):
        await h.jobs.submit(SAM, *SCRIPT, Selection(host_ids=[host]), source="t", session_id="s1")


async def test_the_requester_may_withdraw_and_losing_access_withdraws(h: Four) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.RESPOND)
    (first,) = (await h.ask([host])).jobs
    cancelled = await h.jobs.cancel(first.id, RITA, source="t")
    assert cancelled.state == "cancelled"
    (second,) = (await h.ask([host])).jobs
    await h.jobs.withdraw_for_user(RITA.id, "tier removed")
    assert (await h.jobs.get(second.id)).state == "cancelled"
    assert await h.approvals.pending() == []


async def test_a_service_tokens_request_waits_for_a_person(h: Four, engine: AsyncEngine) -> None:
    host = await h.host("web-1")
    token = User(
        -2,
        "service:soar",
        frozenset({"respond"}),
        False,
        mfa_verified=True,
        segments=frozenset({"ir"}),
        service=True,
    )
    await h.approval("ir", Approval.RESPOND)
    (job,) = (await h.ask([host], who=token)).jobs
    assert job.state == AWAITING_APPROVAL
    await h.approvals.approve(job.id, RON, reason=None, source="t")
    assert (await h.jobs.get(job.id)).state == "queued"


async def test_script_tier_tokens_and_script_approval_never_meet(
    h: Four, engine: AsyncEngine, audit: AuditLog
) -> None:
    await h.host("web-1")
    tokens = ServiceTokens(engine, audit, h.jobs.withdraw_for_user)
    admin = acting("adam")
    await tokens.create("soar", Tier.SCRIPT, ["ir"], timedelta(days=1), [], by=admin, source="t")
    with pytest.raises(Conflict, match="Service token soar holds the script tier in segment ir"):
        await h.approval("ir", Approval.SCRIPT)
    async with engine.connect() as conn:
        setting = (await conn.execute(select(segments.c.approval))).scalar_one()
    assert setting == "off"
    await tokens.revoke("soar", by=admin, source="t")
    await h.approval("ir", Approval.RESPOND)
    with pytest.raises(Conflict, match="service token bot cannot hold the script tier there"):
        await tokens.create("bot", Tier.SCRIPT, ["ir"], timedelta(days=1), [], by=admin, source="t")
    # The respond tier is fine: its requests wait like anyone's.
    await tokens.create("bot", Tier.RESPOND, ["ir"], timedelta(days=1), [], by=admin, source="t")
    (change,) = await chain(engine, "segment.approval")
    assert '"approval":"respond"' in change.details


async def test_approval_timeouts_are_bounded(h: Four) -> None:
    await h.host("web-1")
    with pytest.raises(Invalid, match="between 5 minutes and 7 days"):
        await h.approval("ir", Approval.RESPOND, timeout=60)


async def test_a_decision_racing_the_deadline_cannot_approve_an_expired_request(
    h: Four, engine: AsyncEngine
) -> None:
    host = await h.host("web-1")
    await h.approval("ir", Approval.RESPOND)
    (job,) = (await h.ask([host])).jobs
    async with engine.begin() as conn:
        await conn.execute(update(approvals).values(deadline=utcnow() - timedelta(seconds=1)))
    with pytest.raises(Conflict, match="expired before it was decided"):
        await h.approvals.approve(job.id, RON, reason=None, source="t")
    async with engine.connect() as conn:
        state = (await conn.execute(select(jobs.c.state))).scalar_one()
    assert state == "expired"
