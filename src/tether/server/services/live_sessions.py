"""Live response sessions: one user on one host, each command a job linked to the session.

A session is what `tether shell HOST` (and later the web UI's console) holds open: it is started
and stopped in the audit log, ends by itself after a quiet spell (30 minutes by default), and ends
at once, with its running commands cancelled, when its user is disabled or loses the Active
Response role (`Users.on_access_lost`, docs/adr/0007). Commands are ordinary jobs, checked and
audited by `Jobs.submit`; the session only adds who may send them and until when
(docs/adr/0012).
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import UNFINISHED
from tether.server.errors import Conflict, Forbidden, NotFound
from tether.server.services.access import ResponseAccess, user_refusal
from tether.server.services.audit import AuditLog
from tether.server.services.jobs import Jobs, JobView, Selection
from tether.server.services.users import User
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import hosts, jobs, live_sessions, users

log = logging.getLogger(__name__)

DEFAULT_IDLE = timedelta(minutes=30)
# Who the audit log names when the platform itself ends a session or cancels its commands.
PLATFORM_ACTOR = "platform"
MAX_CWD = 4096


def idle_reason(idle: timedelta) -> str:
    minutes = int(idle.total_seconds() // 60)
    return f"idle for {minutes} minute{'' if minutes == 1 else 's'}"


@dataclass(frozen=True)
class LiveSessionView:
    id: str
    host_id: str
    hostname: str
    user_id: int
    actor: str
    started_at: datetime
    last_activity_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    cwd: str | None
    # Commands (jobs) sent in the session so far.
    commands: int

    @property
    def open(self) -> bool:
        return self.ended_at is None


def _view(row: Any) -> LiveSessionView:
    return LiveSessionView(
        id=row.id,
        host_id=row.host_id,
        hostname=row.hostname,
        user_id=row.user_id,
        actor=row.actor,
        started_at=as_utc(row.started_at),  # type: ignore[arg-type]
        last_activity_at=as_utc(row.last_activity_at),  # type: ignore[arg-type]
        ended_at=as_utc(row.ended_at),
        end_reason=row.end_reason,
        cwd=row.cwd,
        commands=row.commands,
    )


def _query() -> Any:
    commands = (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.session_id == live_sessions.c.id)
        .scalar_subquery()
    )
    return select(live_sessions, hosts.c.hostname, commands.label("commands")).join(
        hosts, hosts.c.id == live_sessions.c.host_id
    )


class LiveSessions:
    """Start, use, stop and expire live response sessions."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        access: ResponseAccess,
        jobs_service: Jobs,
        *,
        idle: timedelta = DEFAULT_IDLE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._access = access
        self._jobs = jobs_service
        self._idle = idle
        self._clock = clock

    @property
    def idle(self) -> timedelta:
        return self._idle

    def _idle_since(self, now: datetime) -> Any:
        """Open sessions quiet since before `now - idle`: no command sent, none running and
        none finished since then (a long script being followed is not idleness)."""
        cutoff = now - self._idle
        busy = exists().where(
            jobs.c.session_id == live_sessions.c.id,
            or_(jobs.c.state.in_(UNFINISHED), jobs.c.finished_at >= cutoff),
        )
        return and_(
            live_sessions.c.ended_at.is_(None),
            live_sessions.c.last_activity_at < cutoff,
            ~busy,
        )

    # -- reading -------------------------------------------------------------------------------

    async def get(self, session_id: str) -> LiveSessionView:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(_query().where(live_sessions.c.id == session_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"No live session has the id {session_id!r}.")
        return _view(row)

    async def find(
        self, *, include_ended: bool = False, user_id: int | None = None, limit: int = 100
    ) -> list[LiveSessionView]:
        """Sessions, newest first: the open ones, or all with `include_ended`."""
        query = _query().order_by(live_sessions.c.started_at.desc(), live_sessions.c.id)
        if not include_ended:
            query = query.where(live_sessions.c.ended_at.is_(None))
        if user_id is not None:
            query = query.where(live_sessions.c.user_id == user_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [_view(r) for r in rows]

    # -- the owner's life of a session ---------------------------------------------------------

    async def start(self, user: User, host_id: str, *, source: str) -> LiveSessionView:
        """Open a session on the host if `user` may run response actions there now."""
        state = await self._access.authorize_response(user, host_id)
        session_id = uuid.uuid4().hex
        now = self._clock()
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                live_sessions.insert().values(
                    id=session_id,
                    host_id=host_id,
                    user_id=user.id,
                    actor=user.actor,
                    started_at=now,
                    last_activity_at=now,
                )
            )
            await tx.record(
                "live_session.start",
                actor=user.actor,
                target=f"live_session:{session_id}",
                source=source,
                details={"host": host_id, "hostname": state.hostname, "segment": state.segment},
            )
        return await self.get(session_id)

    async def command(
        self,
        session_id: str,
        user: User,
        action: str,
        args: dict[str, Any],
        *,
        source: str,
        cwd: str | None = None,
        timeout_seconds: float | None = None,
        from_library: bool = False,
    ) -> JobView:
        """Send one command of the session as a job for its host; only its owner may, while it
        is open and not idle. The job is checked and audited like any other submission."""
        session = await self.get(session_id)
        if session.user_id != user.id:
            raise Forbidden(
                f"Live session {session_id} belongs to {session.actor}; "
                "only they can send commands in it."
            )
        if (refusal := user_refusal(user)) is not None:
            raise Forbidden(refusal)
        if not session.open:
            raise Conflict(_ended_message(session))
        now = self._clock()
        if await self._end_if_idle(session_id, now):
            raise Conflict(_ended_message(await self.get(session_id)))
        values: dict[str, Any] = {"last_activity_at": now}
        if cwd is not None:
            values["cwd"] = cwd[:MAX_CWD]
        async with self._engine.begin() as conn:
            touched = await conn.execute(
                update(live_sessions)
                .where(live_sessions.c.id == session_id, live_sessions.c.ended_at.is_(None))
                .values(**values)
            )
        if not touched.rowcount:
            raise Conflict(_ended_message(await self.get(session_id)))
        batch = await self._jobs.submit(
            user,
            action,
            args,
            Selection(host_ids=[session.host_id]),
            # An interactive command is worth nothing after the session could have idled out.
            ttl=self._idle,
            timeout_seconds=timeout_seconds,
            source=source,
            session_id=session_id,
            from_library=from_library,
        )
        (job,) = batch.jobs
        if not (await self.get(session_id)).open:
            # The session ended (access lost) between the check and the submission: the end
            # cancelled the commands it saw, this one it could not see yet.
            await self._jobs.cancel_for_platform(
                job.id, PLATFORM_ACTOR, source=source, reason="The live session had ended."
            )
            raise Conflict(_ended_message(await self.get(session_id)))
        return await self._jobs.get(job.id)

    async def stop(
        self, session_id: str, user: User, reason: str = "stopped by the user", *, source: str
    ) -> LiveSessionView:
        """End the owner's session; commands still running in it are cancelled."""
        session = await self.get(session_id)
        if session.user_id != user.id:
            raise Forbidden(
                f"Live session {session_id} belongs to {session.actor}; only they can stop it."
            )
        if not session.open:
            raise Conflict(_ended_message(session))
        ended = await self._end([session_id], reason, actor=user.actor, source=source)
        if not ended:
            raise Conflict(_ended_message(await self.get(session_id)))
        return await self.get(session_id)

    # -- the platform ending sessions ----------------------------------------------------------

    async def end_for_user(self, user_id: int, reason: str) -> None:
        """End every open session of the user at once and cancel their unfinished commands:
        the `Users.on_access_lost` listener, so `reason` says how the access ended."""
        async with self._engine.connect() as conn:
            ids = list(
                (
                    await conn.execute(
                        select(live_sessions.c.id).where(
                            live_sessions.c.user_id == user_id, live_sessions.c.ended_at.is_(None)
                        )
                    )
                ).scalars()
            )
        if ids:
            await self._end(
                ids, f"the user's access ended ({reason})", actor=PLATFORM_ACTOR, source="platform"
            )

    async def sweep(self, now: datetime | None = None) -> int:
        """End sessions idle past the limit and those of external users whose access expired
        (that expiry has no event of its own). Returns how many sessions ended."""
        now = now or self._clock()
        async with self._engine.connect() as conn:
            idle_ids = list(
                (
                    await conn.execute(select(live_sessions.c.id).where(self._idle_since(now)))
                ).scalars()
            )
            expired_ids = list(
                (
                    await conn.execute(
                        select(live_sessions.c.id)
                        .join(users, users.c.id == live_sessions.c.user_id)
                        .where(
                            live_sessions.c.ended_at.is_(None),
                            users.c.external.is_(True),
                            users.c.access_expires_at.is_not(None),
                            users.c.access_expires_at <= now,
                        )
                    )
                ).scalars()
            )
        count = 0
        if idle_ids:
            count += len(
                await self._end(
                    idle_ids,
                    idle_reason(self._idle),
                    actor=PLATFORM_ACTOR,
                    source="platform",
                    only_if_idle_at=now,
                )
            )
        expired = [i for i in expired_ids if i not in idle_ids]
        if expired:
            count += len(
                await self._end(
                    expired,
                    "the user's external access expired",
                    actor=PLATFORM_ACTOR,
                    source="platform",
                )
            )
        return count

    async def run_sweeper(self, interval: float) -> None:
        """End idle sessions every `interval` seconds, forever."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("The live session sweeper failed; it will try again.")

    async def _end_if_idle(self, session_id: str, now: datetime) -> bool:
        ended = await self._end(
            [session_id],
            idle_reason(self._idle),
            actor=PLATFORM_ACTOR,
            source="platform",
            only_if_idle_at=now,
        )
        return bool(ended)

    async def _end(
        self,
        session_ids: list[str],
        reason: str,
        *,
        actor: str,
        source: str,
        only_if_idle_at: datetime | None = None,
    ) -> list[str]:
        """Mark the sessions ended (those still open, and idle when asked), cancel their
        unfinished commands and record each end; returns the ids this call ended."""
        now = self._clock()
        ended: list[str] = []
        async with self._engine.begin() as conn:
            for session_id in session_ids:
                condition = and_(
                    live_sessions.c.id == session_id, live_sessions.c.ended_at.is_(None)
                )
                if only_if_idle_at is not None:
                    condition = and_(condition, self._idle_since(only_if_idle_at))
                result = await conn.execute(
                    update(live_sessions)
                    .where(condition)
                    .values(ended_at=now, end_reason=reason[:1000])
                )
                if result.rowcount:
                    ended.append(session_id)
        for session_id in ended:
            session = await self.get(session_id)
            cancelled = await self._cancel_commands(session, reason, actor=actor, source=source)
            await self._audit.record(
                "live_session.stop",
                actor=actor,
                target=f"live_session:{session_id}",
                source=source,
                details={
                    "reason": reason,
                    "user": session.actor,
                    "host": session.host_id,
                    "hostname": session.hostname,
                    "commands": session.commands,
                    "cancelled": cancelled,
                    "started_at": session.started_at.isoformat(),
                },
            )
        return ended

    async def _cancel_commands(
        self, session: LiveSessionView, reason: str, *, actor: str, source: str
    ) -> list[str]:
        async with self._engine.connect() as conn:
            unfinished = list(
                (
                    await conn.execute(
                        select(jobs.c.id).where(
                            jobs.c.session_id == session.id, jobs.c.state.in_(UNFINISHED)
                        )
                    )
                ).scalars()
            )
        cancelled: list[str] = []
        for job_id in unfinished:
            try:
                view = await self._jobs.cancel_for_platform(
                    job_id,
                    actor,
                    source=source,
                    reason=f"Live session {session.id} ended: {reason}",
                )
            except Exception:
                # The session is ended already; one job that cannot be cancelled now is left
                # to its time limit rather than keeping the others running.
                log.exception("Cancelling job %s of live session %s failed.", job_id, session.id)
                continue
            if view is not None:
                cancelled.append(job_id)
        return cancelled


def _ended_message(session: LiveSessionView) -> str:
    return (
        f"Live session {session.id} has ended ({session.end_reason or 'ended'}); start a new one."
    )
