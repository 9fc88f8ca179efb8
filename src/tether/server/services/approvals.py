"""Four-eyes approval (docs/adr/0039): a submission whose action needs a second person's approval
in its hosts' segments waits, one request per batch, until a different person with at least the
action's tier approves it, rejects it, or nobody does in time.

`Jobs.submit` is the one place that decides a job waits (it reads the segment's setting and the
action's declared tier); this module decides who may approve and moves the waiting jobs on: to
`queued` when approved (the dispatcher takes over, with the job's offline queue and expiry), to
`rejected` or `expired` otherwise. Each decision and the state change it makes commit together.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import AWAITING_APPROVAL, Tier, tier_refusal
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.access import user_refusal
from tether.server.services.audit import AuditLog, AuditTransaction
from tether.server.services.dispatch import Dispatcher
from tether.server.services.job_events import JobEvents
from tether.server.services.job_outcomes import Ending, end_jobs
from tether.server.services.users import User
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import approvals, batches, jobs

DEFAULT_TIMEOUT = timedelta(hours=24)
MIN_TIMEOUT = timedelta(minutes=5)
MAX_TIMEOUT = timedelta(days=7)
MAX_REASON = 500
# How a refusal to decide is recorded, so a probing account shows in the chain.
REFUSED_ACTION = "job.approval.refused"


@dataclass(frozen=True)
class ApprovalView:
    """A request for approval and what became of it."""

    batch_id: str
    action: str
    selection: str
    tier: str
    requested_by: str
    # Who asked, by user id: two sessions of one person are one person.
    requested_user_id: int
    requested_at: datetime
    deadline: datetime
    # "pending", "approved", "rejected" or "expired".
    state: str
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    # Jobs of the batch still waiting for this decision, and one of them (the pages and the
    # CLI name a request by a job of it).
    waiting: int = 0
    first_job: str = ""


def describe_timeout(seconds: int) -> str:
    """A timeout in the largest whole unit ("24 hours", "90 minutes")."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def check_timeout(seconds: int) -> int:
    """`seconds` when it is a valid approval timeout; Invalid says the bounds otherwise."""
    if not MIN_TIMEOUT.total_seconds() <= seconds <= MAX_TIMEOUT.total_seconds():
        raise Invalid("An approval timeout is between 5 minutes and 7 days.")
    return seconds


def _view(row: Any, waiting: int = 0, first_job: str = "") -> ApprovalView:
    return ApprovalView(
        batch_id=row.batch_id,
        action=row.action,
        selection=row.selection,
        tier=row.tier,
        requested_by=row.requested_by,
        requested_user_id=int(row.requested_user_id),
        requested_at=as_utc(row.requested_at),  # type: ignore[arg-type]
        deadline=as_utc(row.deadline),  # type: ignore[arg-type]
        state=row.state,
        decided_by=row.decided_by,
        decided_at=as_utc(row.decided_at),
        reason=row.reason,
        waiting=waiting,
        first_job=first_job,
    )


def _query() -> Any:
    return select(approvals, batches.c.action, batches.c.selection).join(
        batches, batches.c.id == approvals.c.batch_id
    )


async def read_approval(conn: AsyncConnection, batch_id: str) -> ApprovalView | None:
    """The batch's request for approval, or None when it needed none."""
    row = (await conn.execute(_query().where(approvals.c.batch_id == batch_id))).first()
    return _view(row) if row is not None else None


def decider_refusal(
    user: User, approval: ApprovalView, job_id: str, verb: str = "approve"
) -> str | None:
    """Why `user` may not approve or reject the request, or None.

    A service token never decides (a person's second look is the point); the requester never
    decides their own, checked by user id so a second session of the same person is the same
    person; the decider holds at least the tier the action needs.
    """
    if user.service:
        return f"{user.username} is a service token; only a person can approve or reject a job."
    if user.id == approval.requested_user_id:
        return f"{user.username} requested job {job_id}; a different person must {verb} it."
    if (refusal := user_refusal(user)) is not None:
        return refusal
    what = f"approving or rejecting job {job_id}"
    return tier_refusal(user.username, user.tier, Tier(approval.tier), what)


class Approvals:
    """Approve, reject and expire requests for approval; list the pending ones."""

    def __init__(
        self, engine: AsyncEngine, audit: AuditLog, dispatcher: Dispatcher, events: JobEvents
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._dispatcher = dispatcher
        self._events = events

    async def pending(self, *, limit: int = 200) -> list[ApprovalView]:
        """Requests nobody has decided yet that still have jobs waiting, oldest first."""
        waiting = (
            select(
                jobs.c.batch_id,
                func.count().label("waiting"),
                func.min(jobs.c.id).label("first_job"),
            )
            .where(jobs.c.state == AWAITING_APPROVAL)
            .group_by(jobs.c.batch_id)
            .subquery()
        )
        query = (
            select(
                approvals,
                batches.c.action,
                batches.c.selection,
                waiting.c.waiting,
                waiting.c.first_job,
            )
            .join(batches, batches.c.id == approvals.c.batch_id)
            .join(waiting, waiting.c.batch_id == approvals.c.batch_id)
            .where(approvals.c.state == "pending")
            .order_by(approvals.c.requested_at)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_view(r, int(r.waiting), r.first_job) for r in rows]

    async def pending_for(self, user: User) -> list[ApprovalView]:
        """The pending requests `user` may decide: not their own, within their tier."""
        return [a for a in await self.pending() if decider_refusal(user, a, a.batch_id) is None]

    async def _request_of(self, job_id: str) -> ApprovalView:
        """The request the job belongs to."""
        async with self._engine.connect() as conn:
            batch_id = (
                await conn.execute(select(jobs.c.batch_id).where(jobs.c.id == job_id))
            ).scalar_one_or_none()
            if batch_id is None:
                raise NotFound(f"No job has the id {job_id!r}.")
            row = (await conn.execute(_query().where(approvals.c.batch_id == batch_id))).first()
        if row is None:
            raise Conflict(f"Job {job_id} did not need approval; there is nothing to decide.")
        return _view(row)

    async def _check_decider(
        self, user: User, job_id: str, verb: str, *, source: str
    ) -> ApprovalView:
        approval = await self._request_of(job_id)
        refusal = decider_refusal(user, approval, job_id, verb)
        if refusal is not None:
            await self._audit.record(
                REFUSED_ACTION,
                actor=user.actor,
                target=f"batch:{approval.batch_id}",
                outcome="failure",
                source=source,
                details={"job": job_id, "decision": verb, "reason": refusal},
            )
            raise Forbidden(refusal)
        if approval.state != "pending":
            by = f" by {approval.decided_by}" if approval.decided_by else ""
            raise Conflict(f"The request for job {job_id} was already {approval.state}{by}.")
        if approval.deadline <= utcnow():
            await self.expire_overdue(utcnow())
            raise Conflict(f"The request for job {job_id} expired before it was decided.")
        return approval

    async def approve(
        self, job_id: str, user: User, *, reason: str | None, source: str
    ) -> ApprovalView:
        """Approve the request job `job_id` belongs to: its waiting jobs are queued and sent to
        the hosts that are online; the others wait for their hosts as any job does."""
        reason = _clean_reason(reason, required=False)
        approval = await self._check_decider(user, job_id, "approve", source=source)
        now = utcnow()
        async with self._audit.transaction() as tx:
            if not await _decide(tx, approval.batch_id, "approved", user, reason, now):
                raise Conflict(f"The request for job {job_id} was decided meanwhile.")
            waiting = (
                await tx.conn.execute(
                    select(jobs.c.id, jobs.c.created_at, jobs.c.expires_at).where(
                        jobs.c.batch_id == approval.batch_id, jobs.c.state == AWAITING_APPROVAL
                    )
                )
            ).all()
            if not waiting:
                raise Conflict(f"No job of the request for job {job_id} is still waiting.")
            # The offline queue starts now: the time the request waited is not taken from the
            # time its jobs may wait for their hosts (not-after stays as the requester set it).
            await tx.conn.execute(
                update(jobs)
                .where(jobs.c.id == bindparam("b_id"), jobs.c.state == AWAITING_APPROVAL)
                .values(state="queued", expires_at=bindparam("b_expires")),
                [
                    {
                        "b_id": r.id,
                        "b_expires": now + (as_utc(r.expires_at) - as_utc(r.created_at)),  # type: ignore[operator]
                    }
                    for r in waiting
                ],
            )
            await tx.record(
                "job.approve",
                actor=user.actor,
                target=f"batch:{approval.batch_id}",
                source=source,
                details={
                    "job": job_id,
                    "action": approval.action,
                    "tier": approval.tier,
                    "requested_by": approval.requested_by,
                    "jobs": len(waiting),
                    "reason": reason,
                },
            )
        job_ids = [r.id for r in waiting]
        for queued in job_ids:
            self._events.notify(queued)
        await self._dispatcher.dispatch(job_ids)
        return await self.of_job(job_id)

    async def reject(self, job_id: str, user: User, *, reason: str, source: str) -> ApprovalView:
        """Reject the request job `job_id` belongs to: its waiting jobs end `rejected`, naming
        who rejected them and why."""
        text = _clean_reason(reason, required=True)
        approval = await self._check_decider(user, job_id, "reject", source=source)
        now = utcnow()
        async with self._audit.transaction() as tx:
            if not await _decide(tx, approval.batch_id, "rejected", user, text, now):
                raise Conflict(f"The request for job {job_id} was decided meanwhile.")
            await tx.record(
                "job.reject",
                actor=user.actor,
                target=f"batch:{approval.batch_id}",
                source=source,
                details={
                    "job": job_id,
                    "action": approval.action,
                    "tier": approval.tier,
                    "requested_by": approval.requested_by,
                    "reason": text,
                },
            )
            ended = await _end_waiting(
                tx, approval.batch_id, "rejected", f"Rejected by {user.actor}: {text}", now
            )
        for ending in ended:
            self._events.notify(ending)
        return await self.of_job(job_id)

    async def expire_overdue(self, now: datetime | None = None) -> int:
        """End the requests nobody decided before their deadline; returns the jobs ended."""
        now = now or utcnow()
        async with self._engine.connect() as conn:
            overdue = (
                await conn.execute(
                    _query().where(approvals.c.state == "pending", approvals.c.deadline < now)
                )
            ).all()
        count = 0
        for row in overdue:
            waited = int((as_utc(row.deadline) - as_utc(row.requested_at)).total_seconds())  # type: ignore[operator]
            reason = (
                f"Nobody approved it within {describe_timeout(waited)} of the request by "
                f"{row.requested_by}, so the request expired."
            )
            async with self._audit.transaction() as tx:
                settled = await tx.conn.execute(
                    update(approvals)
                    .where(approvals.c.batch_id == row.batch_id, approvals.c.state == "pending")
                    .values(state="expired", decided_at=now, reason=reason)
                )
                if not settled.rowcount:
                    continue
                await tx.record(
                    "job.approval.expire",
                    actor="platform",
                    target=f"batch:{row.batch_id}",
                    outcome="failure",
                    source="platform",
                    details={
                        "action": row.action,
                        "requested_by": row.requested_by,
                        "reason": reason,
                    },
                )
                ended = await _end_waiting(tx, row.batch_id, "expired", reason, now)
            for job_id in ended:
                self._events.notify(job_id)
            count += len(ended)
        return count

    async def of_job(self, job_id: str) -> ApprovalView:
        """The request job `job_id` belongs to, with how many of its jobs still wait."""
        approval = await self._request_of(job_id)
        async with self._engine.connect() as conn:
            waiting = (
                await conn.execute(
                    select(func.count()).where(
                        jobs.c.batch_id == approval.batch_id, jobs.c.state == AWAITING_APPROVAL
                    )
                )
            ).scalar_one()
        return ApprovalView(**{**approval.__dict__, "waiting": int(waiting)})


def optional_reason(reason: str | None) -> str | None:
    """A request's stated reason, checked as an approval's is: one line, bounded; None if blank."""
    return _clean_reason(reason, required=False)


def _clean_reason(reason: str | None, *, required: bool) -> str | None:
    text = (reason or "").strip()
    if required and not text:
        raise Invalid("Say why you reject it: a reason is required.")
    if len(text) > MAX_REASON:
        raise Invalid(f"A reason is at most {MAX_REASON} characters.")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise Invalid("A reason is one line of text without control characters.")
    return text or None


async def _decide(
    tx: AuditTransaction, batch_id: str, state: str, user: User, reason: str | None, now: datetime
) -> bool:
    """Settle a pending request; False when another decision came first."""
    result = await tx.conn.execute(
        update(approvals)
        .where(approvals.c.batch_id == batch_id, approvals.c.state == "pending")
        .values(
            state=state,
            decided_by=user.actor,
            decided_user_id=user.id,
            decided_at=now,
            reason=reason,
        )
    )
    return bool(result.rowcount)


async def _end_waiting(
    tx: AuditTransaction, batch_id: str, state: str, reason: str, now: datetime
) -> list[str]:
    """End the batch's waiting jobs in `state` with `reason`, each with its outcome record."""
    waiting = list(
        (
            await tx.conn.execute(
                select(jobs.c.id).where(
                    jobs.c.batch_id == batch_id, jobs.c.state == AWAITING_APPROVAL
                )
            )
        ).scalars()
    )
    finished = await end_jobs(
        tx,
        [Ending(job_id=j, state=state, error=reason) for j in waiting],
        source="platform",
        now=now,
    )
    return [f.job_id for f in finished]
