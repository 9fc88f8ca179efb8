"""The analyst's side of jobs: submit an action to a selection, follow it, cancel it.

A submission is checked (the action's permission; for a response action the Active Response role,
the second factor and each host's segment), persisted as one batch of per-host jobs and audited
with its full arguments before the analyst gets an answer; only then are jobs sent to the hosts
that are online (DESIGN.md section 3).
"""

import json
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import (
    ACTIONS,
    AWAITING_APPROVAL,
    FINAL_STATES,
    UNFINISHED,
    ActionSpec,
    Approval,
    Tier,
    approval_needed,
    tier_refusal,
)
from tether.protocol.action_names import SCRIPT_RUN
from tether.protocol.actions import refusal_name, tier_needed
from tether.protocol.what_ran import what_ran
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.access import (
    ResponseAccess,
    ResponseState,
    host_refusal,
    user_refusal,
)
from tether.server.services.approvals import ApprovalView, optional_reason, read_approval
from tether.server.services.audit import AuditLog
from tether.server.services.dispatch import Dispatcher
from tether.server.services.job_events import JobEvents
from tether.server.services.job_outcomes import Ending, end_jobs
from tether.server.services.users import User
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import approvals, batches, hosts, job_output, jobs, segments

DEFAULT_TTL = timedelta(days=7)
MAX_TTL = timedelta(days=30)
MAX_TIMEOUT_SECONDS = 24 * 3600
# Host ids written into a batch's audit record; beyond this the record names the count.
_AUDITED_HOSTS = 1000
_CHUNK = 500


@dataclass(frozen=True)
class Selection:
    """Which hosts a submission is for: named hosts, a segment, or every host."""

    host_ids: list[str] | None = None
    segment: str | None = None
    everything: bool = False

    def describe(self) -> str:
        if self.everything:
            return "all"
        if self.segment is not None:
            return f"segment:{self.segment}"[:128]
        return "hosts"


@dataclass(frozen=True)
class JobView:
    id: str
    batch_id: str
    host_id: str
    hostname: str
    action: str
    state: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    not_after: datetime | None
    timeout_seconds: float
    # When the platform last sent it to the agent (None while it waits for its host).
    sent_at: datetime | None
    delivered_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_by: str | None
    error: str | None
    result: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    # The audit record of its outcome, once it ended.
    outcome_seq: int | None = None
    # Output the platform could not store (its storage was full).
    output_lost_bytes: int = 0
    # Why an unfinished job has no news: its host is offline, or the agent is silent past the
    # time limit (None when nothing is amiss).
    waiting: str | None = None
    # The request for a second person's approval the job's batch needed, if any.
    approval: ApprovalView | None = None
    # What ran, as the responder typed or chose it ("cat /etc/hosts", "script triage (n=2)").
    summary: str = ""
    # How far its file transfer is (files.get, files.put, a script's upload or download):
    # bytes durable on the receiving side of `transfer_size`, at `transfer_rate` bytes per
    # second, as of `transfer_at`; None before any byte moved (docs/adr/0054).
    transfer_bytes: int | None = None
    transfer_size: int | None = None
    transfer_rate: float | None = None
    transfer_at: datetime | None = None


@dataclass(frozen=True)
class OutputPiece:
    id: int
    seq: int
    stream: str
    text: str | None
    fields: dict[str, Any] | None


@dataclass
class BatchView:
    id: str
    action: str
    selection: str
    created_by: str
    created_at: datetime
    counts: dict[str, int]
    jobs: list[JobView] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    approval: ApprovalView | None = None
    # What the requester is told when some of the jobs wait for approval.
    notice: str | None = None


def validate_args(spec: ActionSpec, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments checked against the action's declared model, in canonical form."""
    try:
        model = spec.args.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "args"
        raise Invalid(f"Invalid arguments for {spec.name} ({where}): {err['msg']}.") from exc
    dumped: dict[str, Any] = model.model_dump(mode="json")
    return dumped


def _job_view(row: Any, *, full: bool = False) -> JobView:
    args = json.loads(row.args)
    return JobView(
        id=row.id,
        batch_id=row.batch_id,
        host_id=row.host_id,
        hostname=row.hostname,
        action=row.action,
        state=row.state,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
        expires_at=as_utc(row.expires_at),  # type: ignore[arg-type]
        not_after=as_utc(row.not_after),
        timeout_seconds=row.timeout_seconds,
        sent_at=as_utc(row.sent_at),
        delivered_at=as_utc(row.delivered_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
        cancel_requested_by=row.cancel_requested_by,
        error=row.error,
        result=json.loads(row.result) if full and row.result else None,
        args=args if full else None,
        outcome_seq=row.outcome_seq,
        output_lost_bytes=int(row.output_lost_bytes or 0),
        summary=what_ran(row.action, args),
        # A job that succeeded moved its file whole (verified at the end), even when the last
        # progress write lost the race with its ending.
        transfer_bytes=(
            row.transfer_size
            if row.state == "succeeded" and row.transfer_size is not None
            else row.transfer_bytes
        ),
        transfer_size=row.transfer_size,
        transfer_rate=row.transfer_rate,
        transfer_at=as_utc(row.transfer_at),
    )


# How long past its time limit a job may run without a report before the page says so.
SILENCE_GRACE = timedelta(seconds=60)


def waiting_reason(view: JobView, online: bool, last_seen: datetime | None) -> str | None:
    """Why an unfinished job has no news, in one sentence, or None."""
    if view.state in FINAL_STATES or view.state == AWAITING_APPROVAL:
        # A job awaiting approval says so through its request (`JobView.approval`).
        return None
    if view.state == "queued" and view.sent_at is None:
        return None
    if not online:
        seen = f"{last_seen:%Y-%m-%d %H:%M:%S} UTC" if last_seen else "an unknown time"
        return f"Host offline since {seen}; what became of the job will be known when it returns."
    since = view.started_at or view.delivered_at or view.sent_at
    if since is None:
        return None
    limit = since + timedelta(seconds=view.timeout_seconds)
    if utcnow() > limit + SILENCE_GRACE:
        return (
            f"The agent has not reported since the job's time limit passed at "
            f"{limit:%Y-%m-%d %H:%M:%S} UTC."
        )
    return None


def approval_scope(setting: str) -> str:
    """Which actions a segment's approval setting covers, as a refusal names them."""
    return "respond and script actions" if setting == Approval.RESPOND else "script actions"


def awaiting_notice(state: ResponseState, job_id: str) -> str:
    """What the requester is told when their submission waits for approval."""
    return (
        f"Segment {state.segment} needs a second person's approval for "
        f"{approval_scope(state.segment_approval)}; job {job_id} is awaiting approval."
    )


def _job_query() -> Any:
    return (
        select(jobs, hosts.c.hostname, hosts.c.last_seen, batches.c.args)
        .join(hosts, hosts.c.id == jobs.c.host_id)
        .join(batches, batches.c.id == jobs.c.batch_id)
    )


class Jobs:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        access: ResponseAccess,
        dispatcher: Dispatcher,
        events: JobEvents,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._access = access
        self._dispatcher = dispatcher
        self._events = events
        # Checks an action's arguments need beyond their model (a deployed file must exist).
        self._argument_checks: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        # Actions only a service may submit (isolation applies the platform's allowlist), with
        # the sentence that says where to go instead.
        self._reserved: dict[str, str] = {}

    def _view(self, row: Any, *, full: bool = False) -> JobView:
        view = _job_view(row, full=full)
        if view.state in FINAL_STATES:
            return view
        online, seen = self._dispatcher.host_presence(row.host_id)
        last_seen = seen or as_utc(row.last_seen)
        return replace(view, waiting=waiting_reason(view, online, last_seen))

    def reserve(self, action: str, sentence: str) -> None:
        """Only submissions with `reserved=True` may run `action`; others are told `sentence`."""
        self._reserved[action] = sentence

    def check_arguments(
        self, action: str, check: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Run `check` on the validated arguments of every submission of `action`."""
        self._argument_checks[action] = check

    async def resolve(self, selection: Selection) -> list[str]:
        """The ids of the hosts `selection` names (NotFound, Invalid when it names none)."""
        return await self._resolve(selection)

    async def _resolve(self, selection: Selection) -> list[str]:
        if selection.host_ids is not None:
            if not selection.host_ids:
                raise Invalid("Name at least one host, a segment, or all hosts.")
            return list(dict.fromkeys(selection.host_ids))
        query = select(hosts.c.id).where(hosts.c.revoked_at.is_(None)).order_by(hosts.c.hostname)
        if selection.segment is not None:
            async with self._engine.connect() as conn:
                found = (
                    await conn.execute(
                        select(segments.c.id).where(segments.c.name == selection.segment)
                    )
                ).scalar_one_or_none()
                if found is None:
                    raise NotFound(f"No segment is named {selection.segment!r}.")
            query = query.where(hosts.c.segment_id == found)
        elif not selection.everything:
            raise Invalid("Name at least one host, a segment, or all hosts.")
        async with self._engine.connect() as conn:
            ids = list((await conn.execute(query)).scalars())
        if not ids:
            raise Invalid("The selection holds no hosts.")
        return ids

    async def submit(
        self,
        user: User,
        action: str,
        args: dict[str, Any],
        selection: Selection,
        *,
        ttl: timedelta | None = None,
        not_after: datetime | None = None,
        timeout_seconds: float | None = None,
        source: str,
        from_library: bool = False,
        session_id: str | None = None,
        reserved: bool = False,
        reason: str | None = None,
    ) -> BatchView:
        """Check, persist, audit, then send to online hosts; returns the batch.

        `session_id` links the jobs to the live response session they are a command of;
        `reason` is the requester's why (a ticket, a detection), kept in the submission's record.
        """
        spec = ACTIONS.get(action)
        if spec is None:
            raise NotFound(f"There is no action named {action!r}; 'tether actions' lists them.")
        if spec.response and (refusal := user_refusal(user)) is not None:
            raise Forbidden(refusal)
        if spec.permission not in user.permissions:
            raise Forbidden(f"You need the {spec.permission.value} permission to run {action}.")
        if action in self._reserved and not reserved:
            raise Invalid(self._reserved[action])
        clean_args = validate_args(spec, args)
        stated = optional_reason(reason)
        needed: Tier | None = None
        if spec.response:
            needed = tier_needed(spec, clean_args, from_library=from_library)
            what = refusal_name(spec, from_library=from_library)
            if (refusal := tier_refusal(user.username, user.tier, needed, what)) is not None:
                await self._audit.record(
                    "job.refused",
                    actor=user.actor,
                    target=action,
                    outcome="failure",
                    source=source,
                    details={"reason": refusal, "tier": needed.value},
                )
                raise Forbidden(refusal)
        if action == SCRIPT_RUN and clean_args.get("name") and not from_library:
            # The name says "this is library script X, version N" in the audit log and on the
            # endpoint: only the platform may write it, after resolving the library script.
            raise Invalid(
                "A script's library name is set by the platform; run a library script with the "
                "script field instead of args.name."
            )
        if (check := self._argument_checks.get(action)) is not None:
            await check(clean_args)
        ttl = ttl if ttl is not None else DEFAULT_TTL
        if not timedelta(seconds=1) <= ttl <= MAX_TTL:
            raise Invalid("The time to live must be between 1 second and 30 days.")
        now = utcnow()
        if not_after is not None:
            if not_after.tzinfo is None:
                raise Invalid(
                    "The not-after time needs a time zone (for example 2026-12-01T08:00Z)."
                )
            if not_after <= now:
                raise Invalid("The not-after time is already past.")
        timeout = timeout_seconds if timeout_seconds is not None else spec.timeout_seconds
        if not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
            raise Invalid("The time limit must be between 1 second and 24 hours.")

        host_ids = await self._resolve(selection)
        states = await self._access.states_of(host_ids)
        refused: dict[str, str] = {}
        for host_id in host_ids:
            state = states.get(host_id)
            if state is None:
                raise NotFound(f"No host has the id {host_id!r}.")
            if user.segments is not None and state.segment not in user.segments:
                # A service token acts only in the segments it was created for (ADR 0038).
                refused[host_id] = (
                    f"{user.username} may act only in segments "
                    f"{', '.join(sorted(user.segments))}; {state.hostname} is in segment "
                    f"{state.segment}."
                )
            elif spec.response and (reason := host_refusal(state)) is not None:
                refused[host_id] = reason
        accepted = [h for h in host_ids if h not in refused]
        # Four eyes (docs/adr/0039): decided here, the one place every action passes through,
        # from the action's declared tier and each host's segment setting.
        awaiting = [
            h
            for h in accepted
            if needed is not None and approval_needed(states[h].segment_approval, needed)
        ]
        if awaiting and session_id is not None:
            state = states[awaiting[0]]
            refusal = (
                f"Segment {state.segment} needs a second person's approval for "
                f"{approval_scope(state.segment_approval)}, which a live-session command cannot "
                "wait for; submit it as a job instead ('tether run' or the Run script page)."
            )
            await self._audit.record(
                "job.refused",
                actor=user.actor,
                target=action,
                outcome="failure",
                source=source,
                details={"reason": refusal, "session": session_id},
            )
            raise Forbidden(refusal)
        if not accepted:
            reason = next(iter(refused.values()))
            if user.service:
                await self._audit.record(
                    "job.refused",
                    actor=user.actor,
                    target=action,
                    outcome="failure",
                    source=source,
                    details={"reason": reason},
                )
            raise Forbidden(reason)

        batch_id = uuid.uuid4().hex
        job_ids = {host_id: uuid.uuid4().hex for host_id in accepted}
        waits = set(awaiting)
        deadline = (
            now + timedelta(seconds=min(states[h].approval_timeout_seconds for h in awaiting))
            if awaiting
            else None
        )
        args_text = json.dumps(clean_args, sort_keys=True, separators=(",", ":"))
        # The submission's record and its jobs commit together: no job runs unrecorded, and no
        # record claims a submission whose jobs were never stored.
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                batches.insert().values(
                    id=batch_id,
                    action=action,
                    args=args_text,
                    selection=selection.describe(),
                    created_by=user.actor,
                    created_at=now,
                )
            )
            rows = [
                {
                    "id": job_ids[h],
                    "batch_id": batch_id,
                    "host_id": h,
                    "action": action,
                    "state": AWAITING_APPROVAL if h in waits else "queued",
                    "created_by": user.actor,
                    "user_id": user.id,
                    "created_at": now,
                    "expires_at": now + ttl,
                    "not_after": not_after,
                    "timeout_seconds": float(timeout),
                    "output_bytes": 0,
                    "output_count": 0,
                    "session_id": session_id,
                }
                for h in accepted
            ]
            for start in range(0, len(rows), _CHUNK):
                await tx.conn.execute(jobs.insert(), rows[start : start + _CHUNK])
            await tx.record(
                "job.submit",
                actor=user.actor,
                target=f"batch:{batch_id}",
                source=source,
                details={
                    "action": action,
                    "args": clean_args,
                    "selection": selection.describe(),
                    "hosts": accepted if len(accepted) <= _AUDITED_HOSTS else len(accepted),
                    "jobs": len(accepted),
                    "refused": refused if len(refused) <= _AUDITED_HOSTS else len(refused),
                    "ttl_seconds": int(ttl.total_seconds()),
                    "not_after": not_after.isoformat() if not_after else None,
                    "timeout_seconds": timeout,
                    **({"session": session_id} if session_id is not None else {}),
                    **({"awaiting_approval": len(awaiting)} if awaiting else {}),
                    **({"reason": stated} if stated is not None else {}),
                },
            )
            if awaiting and needed is not None and deadline is not None:
                await tx.conn.execute(
                    approvals.insert().values(
                        batch_id=batch_id,
                        tier=needed.value,
                        requested_by=user.actor,
                        requested_user_id=user.id,
                        requested_at=now,
                        deadline=deadline,
                        state="pending",
                    )
                )
                await tx.record(
                    "job.approval.request",
                    actor=user.actor,
                    target=f"batch:{batch_id}",
                    source=source,
                    details={
                        "action": action,
                        "tier": needed.value,
                        "jobs": len(awaiting),
                        "segments": sorted({states[h].segment for h in awaiting}),
                        "deadline": deadline.isoformat(),
                    },
                )
        await self._dispatcher.dispatch([job_ids[h] for h in accepted if h not in waits])
        view = await self.batch(batch_id)
        view.refused = refused
        if awaiting:
            view.notice = awaiting_notice(states[awaiting[0]], job_ids[awaiting[0]])
        return view

    async def get(self, job_id: str) -> JobView:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_job_query().where(jobs.c.id == job_id))).one_or_none()
            if row is None:
                raise NotFound(f"No job has the id {job_id!r}.")
            approval = await read_approval(conn, row.batch_id)
        return replace(self._view(row, full=True), approval=approval)

    async def find(
        self,
        *,
        states: list[str] | None = None,
        host_id: str | None = None,
        batch_id: str | None = None,
        action: str | None = None,
        cancel_requested: bool | None = None,
        limit: int = 100,
    ) -> list[JobView]:
        query = _job_query().order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        if cancel_requested is not None:
            asked = jobs.c.cancel_requested_by
            query = query.where(asked.is_not(None) if cancel_requested else asked.is_(None))
        if action is not None:
            query = query.where(jobs.c.action == action)
        if states:
            query = query.where(jobs.c.state.in_(states))
        if host_id is not None:
            query = query.where(jobs.c.host_id == host_id)
        if batch_id is not None:
            query = query.where(jobs.c.batch_id == batch_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._view(r) for r in rows]

    async def batch_summaries(self, batch_ids: Collection[str]) -> dict[str, str]:
        """What each batch ran ("cat /etc/hosts", "script triage (n=2)"), in one query: the
        Session History names the batches its records are about."""
        if not batch_ids:
            return {}
        query = select(batches.c.id, batches.c.action, batches.c.args).where(
            batches.c.id.in_(list(batch_ids))
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.id: what_ran(row.action, json.loads(row.args)) for row in rows}

    async def batch(self, batch_id: str, *, limit: int = 1000) -> BatchView:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(batches).where(batches.c.id == batch_id))
            ).one_or_none()
            if row is None:
                raise NotFound(f"No batch has the id {batch_id!r}.")
            approval = await read_approval(conn, batch_id)
            counts = {
                state: count
                for state, count in await conn.execute(
                    select(jobs.c.state, func.count())
                    .where(jobs.c.batch_id == batch_id)
                    .group_by(jobs.c.state)
                )
            }
        return BatchView(
            id=row.id,
            action=row.action,
            selection=row.selection,
            created_by=row.created_by,
            created_at=as_utc(row.created_at),  # type: ignore[arg-type]
            counts=counts,
            jobs=await self.find(batch_id=batch_id, limit=limit),
            approval=approval,
        )

    async def output(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[OutputPiece]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(job_output)
                    .where(job_output.c.job_id == job_id, job_output.c.id > after)
                    .order_by(job_output.c.id)
                    .limit(limit)
                )
            ).all()
        return [
            OutputPiece(
                id=r.id,
                seq=r.seq,
                stream=r.stream,
                text=r.text,
                fields=json.loads(r.fields) if r.fields else None,
            )
            for r in rows
        ]

    async def output_tally(self, batch_id: str) -> dict[str, tuple[int, int]]:
        """How many pieces of text (not empty) and rows each job of a batch has stored, in one
        grouped read: a summary of a run on many hosts counts without reading any output."""
        is_row = job_output.c.stream == "row"
        has_text = and_(~is_row, func.coalesce(func.length(job_output.c.text), 0) > 0)
        query = (
            select(
                job_output.c.job_id,
                func.sum(case((has_text, 1), else_=0)),
                func.sum(case((is_row, 1), else_=0)),
            )
            .join(jobs, jobs.c.id == job_output.c.job_id)
            .where(jobs.c.batch_id == batch_id)
            .group_by(job_output.c.job_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {job_id: (int(text or 0), int(row or 0)) for job_id, text, row in rows}

    async def follow(
        self, job_id: str, *, after: int, wait: float
    ) -> tuple[JobView, list[OutputPiece]]:
        """New output after `after`, waiting up to `wait` seconds for some or for the end."""
        deadline = utcnow() + timedelta(seconds=wait)
        while True:
            job = await self.get(job_id)
            pieces = await self.output(job_id, after=after)
            remaining = (deadline - utcnow()).total_seconds()
            if pieces or job.state in FINAL_STATES or remaining <= 0:
                return job, pieces
            # Re-read at least every second: the change may happen in another platform process.
            await self._events.wait([job_id], min(remaining, 1.0))

    async def cancel(self, job_id: str, user: User, *, source: str) -> JobView:
        """Cancel a pending job at once; ask the agent to stop one it already has."""
        job = await self.get(job_id)
        response = job.action not in ACTIONS or ACTIONS[job.action].response
        if response and (refusal := user_refusal(user)) is not None:
            raise Forbidden(refusal)
        if job.state in FINAL_STATES:
            raise Conflict(f"Job {job_id} already ended ({job.state}); there is nothing to cancel.")
        return await self._cancel(job, user.actor, source=source)

    async def withdraw_for_user(self, user_id: int, reason: str) -> None:
        """The user's access ended: their response jobs not yet finished are cancelled (unsent
        ones at once, the others through their agents), so nothing they queued runs later.
        The `Users.on_access_lost` listener."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.action).where(
                        jobs.c.user_id == user_id,
                        jobs.c.state.in_((AWAITING_APPROVAL, *UNFINISHED)),
                    )
                )
            ).all()
        for row in rows:
            if row.action in ACTIONS and not ACTIONS[row.action].response:
                continue
            await self.cancel_for_platform(
                row.id,
                "platform",
                source="platform",
                reason=f"its submitter lost access ({reason})",
            )

    async def cancel_for_platform(
        self, job_id: str, actor: str, *, source: str, reason: str
    ) -> JobView | None:
        """Cancel a job without checking a caller, for the platform's own decisions (a live
        session ending: idle, stopped, or its user lost access); `actor` is recorded as the one
        who cancelled. None when the job had ended already."""
        job = await self.get(job_id)
        if job.state in FINAL_STATES:
            return None
        return await self._cancel(job, actor, source=source, reason=reason)

    async def _cancel(
        self, job: JobView, actor: str, *, source: str, reason: str | None = None
    ) -> JobView:
        job_id = job.id
        now = utcnow()
        details: dict[str, Any] = {"host": job.host_id, "action": job.action, "state": job.state}
        if reason is not None:
            details["reason"] = reason
        async with self._audit.transaction() as tx:
            # Never sent: withdrawn at once, its outcome recorded with the request.
            withdrawn = await end_jobs(
                tx,
                [
                    Ending(
                        job_id=job_id,
                        state="cancelled",
                        error=(
                            f"Cancelled by {actor} before it was delivered"
                            + (f": {reason}." if reason else ".")
                        ),
                        stamps={"cancel_requested_by": actor},
                    )
                ]
                if job.state == AWAITING_APPROVAL or (job.state == "queued" and job.sent_at is None)
                else [],
                source=source,
                now=now,
            )
            if not withdrawn:
                await tx.conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state.in_(UNFINISHED))
                    .values(cancel_requested_by=actor)
                )
            await tx.record(
                "job.cancel", actor=actor, target=f"job:{job_id}", source=source, details=details
            )
        self._events.notify(job_id)
        if not withdrawn:
            await self._dispatcher.send_cancel(job_id)
        return await self.get(job_id)
