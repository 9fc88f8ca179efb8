"""The agent's side of jobs on the platform: send, re-send, record acknowledgements and output.

The database is the truth: a job is sent only after an update marked it sent, and its state moves
only on what its own host's agent acknowledges, in lifecycle order (DESIGN.md section 3). Every
host-side condition is checked again right before sending (`ResponseAccess.dispatch_refusals`): a
queued job whose host left an Active Response segment fails with that reason and is never sent.
"""

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import (
    ACTIONS,
    FINAL_AGENT_STATES,
    FINAL_STATES,
    PROTOCOL_VERSION,
    UNFINISHED,
    JobAck,
    JobCancel,
    JobOutput,
    JobRequest,
    JobStatus,
    can_move,
)
from tether.protocol.compat import unsendable
from tether.server.services.access import ResponseAccess
from tether.server.services.audit import AuditLog, AuditTransaction
from tether.server.services.batching import Coalesced
from tether.server.services.bus import Bus, Topic
from tether.server.services.buses.local import LocalBus
from tether.server.services.endpoint_misbehaviour import (
    JOB_OUTPUT,
    JOB_STATUS,
    EndpointMisbehaviour,
)
from tether.server.services.file_transfers import FileTransfers, FinishedJob
from tether.server.services.job_events import JobEvents
from tether.server.services.job_outcomes import Ending, end_jobs
from tether.server.services.presence import AgentLink, Presence
from tether.server.store.db import as_utc, insert_ignoring_duplicates, utcnow
from tether.server.store.faults import FaultCounter, is_storage_full
from tether.server.store.tables import batches, job_output, jobs

log = logging.getLogger(__name__)

# After its time limit, how long a delivered job may stay silent before the platform gives up.
REPORT_GRACE = timedelta(minutes=10)
_CHUNK = 500


@dataclass(frozen=True)
class OutputLimits:
    """What the platform keeps of one job's output, whatever the agent sends."""

    max_bytes: int = 16 * 1024 * 1024
    max_pieces: int = 100_000


def _expired_reason(row: Any, now: datetime) -> str | None:
    not_after = as_utc(row.not_after)
    if not_after is not None and not_after < now:
        return (
            f"The job was not delivered before its not-after time ({not_after:%Y-%m-%d %H:%M} UTC)."
        )
    expires = as_utc(row.expires_at)
    if expires is not None and expires < now:
        return (
            f"The host did not come online before the job expired ({expires:%Y-%m-%d %H:%M} UTC)."
        )
    return None


def job_request(row: Any) -> JobRequest:
    """The frame for a stored job; the agent refuses to start it after its expiry or not-after."""
    stops = [t for t in (as_utc(row.not_after), as_utc(row.expires_at)) if t is not None]
    return JobRequest(
        job_id=row.id,
        action=row.action,
        args=json.loads(row.args),
        timeout_seconds=row.timeout_seconds,
        not_after=min(stops) if stops else None,
    )


class Dispatcher:
    """Sends jobs to connected agents and records what they acknowledge."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        presence: Presence,
        access: ResponseAccess,
        events: JobEvents,
        limits: OutputLimits | None = None,
        transfers: FileTransfers | None = None,
        faults: FaultCounter | None = None,
        misbehaviour: EndpointMisbehaviour | None = None,
        bus: Bus | None = None,
    ) -> None:
        self._engine = engine
        # Sends and cancels reach the agent through the process that holds its connection: this
        # one in a single process, the gateway's in a split platform (docs/adr/0044).
        if bus is None:
            bus = LocalBus()
            self.serve_agents(bus)
        self._bus = bus
        # Reports and output for another host's job are refused and recorded in summary.
        self._misbehaviour = misbehaviour or EndpointMisbehaviour(audit)
        self._audit = audit
        self._transfers = transfers
        self._finished: list[Callable[[FinishedJob], Awaitable[None]]] = []
        # Other deadlines the sweeper keeps (a request for approval nobody decided in time).
        self._sweeps: list[Callable[[datetime], Awaitable[int]]] = []
        self._committing: list[Callable[[AuditTransaction, FinishedJob], Awaitable[None]]] = []
        self._result_checks: dict[str, Callable[[str, dict[str, Any]], str | None]] = {}
        self._faults = faults or FaultCounter()
        # Output of a job this process could not store (storage full), in characters; said in
        # the job's ending. A restart forgets it, but the agent then sends its journal again.
        self._lost: dict[str, int] = {}
        # Final reports that could not be recorded (storage full): tried again by the sweeper,
        # never acknowledged before, so the agent keeps them meanwhile.
        self._unrecorded: dict[str, tuple[str, JobStatus]] = {}
        self._presence = presence
        self._access = access
        self._events = events
        self._limits = limits or OutputLimits()
        # A reconnect storm brings thousands of hosts at once: one read covers all of them.
        self._unfinished: Coalesced[None, dict[str, list[Any]]] = Coalesced(self._read_unfinished)
        # Endings reported together are recorded together: one transaction, one signed head.
        self._endings: Coalesced[tuple[str, JobStatus], set[str]] = Coalesced(self._record_endings)
        # Cancellations sent over each connection: the catch-up sweep sends only the others.
        self._cancels_sent: weakref.WeakKeyDictionary[AgentLink, set[str]] = (
            weakref.WeakKeyDictionary()
        )

    def serve_agents(self, bus: Bus) -> None:
        """Send what `bus` says is ready or cancelled to the agents connected here."""
        bus.subscribe(Topic.JOBS_READY, self.dispatch_here)
        bus.subscribe(Topic.JOBS_CANCEL, self.cancel_here)

    def host_presence(self, host_id: str) -> tuple[bool, datetime | None]:
        """Whether the host is connected here, and when it was last heard from if known."""
        return self._presence.is_online(host_id), self._presence.pending_last_seen(host_id)

    def check_result(self, action: str, check: Callable[[str, dict[str, Any]], str | None]) -> None:
        """Before a succeeded `action` is recorded, `check(job_id, result)` may say why the
        agent's report cannot be believed; the job then ends failed with that sentence."""
        self._result_checks[action] = check

    def on_ending_commit(
        self, writer: Callable[[AuditTransaction, FinishedJob], Awaitable[None]]
    ) -> None:
        """Call `writer` inside the transaction that records each ending, for state that must
        commit with it (a retrieval's library entry): nobody sees one without the other."""
        self._committing.append(writer)

    def on_finished(self, listener: Callable[[FinishedJob], Awaitable[None]]) -> None:
        """Call `listener` with every job an agent (or the sweeper) brings to a final state."""
        self._finished.append(listener)

    def on_sweep(self, sweep: Callable[[datetime], Awaitable[int]]) -> None:
        """Call `sweep(now)` at every sweep; it returns how many jobs it ended."""
        self._sweeps.append(sweep)

    async def _announce(self, job: FinishedJob) -> None:
        for listener in self._finished:
            try:
                await listener(job)
            except Exception:
                log.exception("A listener failed on job %s ending %s", job.job_id, job.state)

    # -- sending -------------------------------------------------------------------------------

    async def host_connected(self, link: AgentLink) -> None:
        """Send a reconnected host everything it is owed: queued jobs, resends, cancels."""
        rows = (await self._unfinished.submit(link.host_id, None)).get(link.host_id, [])
        if rows:
            await self._send(rows)

    async def dispatch(self, job_ids: list[str]) -> None:
        """Have freshly queued jobs sent by whichever process holds their hosts' connections."""
        await self._bus.publish(Topic.JOBS_READY, job_ids)

    async def dispatch_here(self, job_ids: Sequence[str]) -> None:
        """Send freshly queued jobs to those of their hosts that are online in this process."""
        rows: list[Any] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(job_ids), _CHUNK):
                chunk = job_ids[start : start + _CHUNK]
                rows += (
                    await conn.execute(
                        self._job_query().where(jobs.c.id.in_(chunk), jobs.c.state == "queued")
                    )
                ).all()
        # Only hosts connected here: with several nodes, another node's hosts are online too.
        await self._send([r for r in rows if self._presence.link(r.host_id) is not None])

    async def dispatch_waiting(self) -> None:
        """Send queued jobs of hosts online here that no wake-up reached (another process
        queued them, or a wake-up was lost)."""
        online = self._presence.online_ids()
        if not online:
            return
        rows: list[Any] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(online), _CHUNK):
                rows += (
                    await conn.execute(
                        self._job_query().where(
                            jobs.c.state == "queued",
                            jobs.c.sent_at.is_(None),
                            jobs.c.host_id.in_(online[start : start + _CHUNK]),
                        )
                    )
                ).all()
        if rows:
            await self._send(rows)

    @staticmethod
    def _job_query() -> Any:
        return select(
            jobs.c.id,
            jobs.c.host_id,
            jobs.c.action,
            jobs.c.state,
            jobs.c.expires_at,
            jobs.c.not_after,
            jobs.c.timeout_seconds,
            jobs.c.sent_at,
            jobs.c.cancel_requested_by,
            batches.c.args,
        ).join(batches, batches.c.id == jobs.c.batch_id)

    async def _read_unfinished(self, hosts: dict[str, None]) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        wanted = list(hosts)
        async with self._engine.connect() as conn:
            for start in range(0, len(wanted), _CHUNK):
                rows = await conn.execute(
                    self._job_query()
                    .where(
                        jobs.c.host_id.in_(wanted[start : start + _CHUNK]),
                        jobs.c.state.in_(UNFINISHED),
                    )
                    .order_by(jobs.c.created_at)
                )
                for row in rows:
                    found.setdefault(row.host_id, []).append(row)
        return found

    async def _send(self, rows: list[Any]) -> None:
        now = utcnow()
        queued = [r for r in rows if r.state == "queued" and r.cancel_requested_by is None]
        ended: dict[str, tuple[str, str]] = {}
        for row in queued:
            reason = _expired_reason(row, now)
            if reason is not None:
                ended[row.id] = ("expired", reason)
        response_hosts = sorted(
            {r.host_id for r in queued if r.id not in ended and _is_response(r.action)}
        )
        refusals = await self._access.dispatch_refusals(response_hosts) if response_hosts else {}
        for row in queued:
            if row.id not in ended and _is_response(row.action) and row.host_id in refusals:
                ended[row.id] = ("failed", f"Not sent: {refusals[row.host_id]}")
        for row in queued:
            link = self._presence.link(row.host_id)
            # Only an agent of the previous protocol version can be asked what it cannot do.
            if row.id in ended or link is None or link.protocol_version >= PROTOCOL_VERSION:
                continue
            reason = unsendable(row.action, json.loads(row.args), link.protocol_version)
            if reason is not None:
                ended[row.id] = ("failed", f"Not sent: {reason}")
        if ended:
            await self._end_queued(ended, now)
        to_send = [r for r in queued if r.id not in ended]
        sent = await self._mark_sent([r.id for r in to_send], now) if to_send else set()
        for row in rows:
            link = self._presence.link(row.host_id)
            if link is None:
                continue
            if row.id in sent or (row.state != "queued" and row.id not in ended):
                if self._transfers is not None:
                    # Ready for the file before the agent can start sending it.
                    await self._transfers.start_for_job(
                        row.host_id, row.id, row.action, json.loads(row.args)
                    )
                # Unfinished jobs are sent again: the agent answers with the state it holds.
                await link.send_text(job_request(row).model_dump_json())
            if row.cancel_requested_by is not None:
                await self._send_cancel_over(link, row.id)

    async def _end_queued(self, ended: dict[str, tuple[str, str]], now: datetime) -> None:
        await self._end(
            [Ending(job_id=j, state=state, error=reason) for j, (state, reason) in ended.items()],
            now,
        )

    async def _commit_with(self, tx: AuditTransaction, finished: list[FinishedJob]) -> None:
        for job in finished:
            for writer in self._committing:
                await writer(tx, job)

    def _with_losses(self, ending: Ending) -> Ending:
        """The ending, saying how much of its output storage refused, if any."""
        lost = self._lost.get(ending.job_id)
        if not lost:
            return ending
        note = f"Output incomplete: {lost} bytes were lost because the platform's storage was full."
        return replace(
            ending,
            error=f"{ending.error} {note}" if ending.error else note,
            stamps={**ending.stamps, "output_lost_bytes": lost},
        )

    async def _end(self, endings: list[Ending], now: datetime) -> list[FinishedJob]:
        """Platform-decided endings, with their outcome records, then their listeners."""
        async with self._audit.transaction() as tx:
            finished = await end_jobs(
                tx, [self._with_losses(e) for e in endings], source="platform", now=now
            )
            await self._commit_with(tx, finished)
        for job in finished:
            self._lost.pop(job.job_id, None)
            self._events.notify(job.job_id)
            await self._announce(job)
        return finished

    async def _mark_sent(self, job_ids: list[str], now: datetime) -> set[str]:
        """Mark jobs sent, only those still queued: a cancel that won the race keeps its job."""
        sent: set[str] = set()
        async with self._engine.begin() as conn:
            for start in range(0, len(job_ids), _CHUNK):
                result = await conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(job_ids[start : start + _CHUNK]), jobs.c.state == "queued")
                    .values(sent_at=now)
                    .returning(jobs.c.id)
                )
                sent.update(result.scalars())
        return sent

    async def send_cancel(self, job_id: str) -> None:
        """Have the agent holding the job asked to stop it, wherever it is connected (the
        cancellation is committed: an agent not reached now is asked when it reconnects)."""
        await self._bus.publish(Topic.JOBS_CANCEL, [job_id])

    async def cancel_here(self, job_ids: Sequence[str], *, only_unsent: bool = False) -> None:
        """Ask the agents connected here to stop those of `job_ids` whose cancellation is on
        record and that have not ended."""
        wanted = list(job_ids)
        rows: list[Any] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(wanted), _CHUNK):
                rows += (
                    await conn.execute(
                        select(jobs.c.id, jobs.c.host_id).where(
                            jobs.c.id.in_(wanted[start : start + _CHUNK]),
                            jobs.c.cancel_requested_by.is_not(None),
                            jobs.c.state.in_(UNFINISHED),
                        )
                    )
                ).all()
        for row in rows:
            link = self._presence.link(row.host_id)
            if link is not None and not (
                only_unsent and row.id in self._cancels_sent.get(link, ())
            ):
                await self._send_cancel_over(link, row.id)

    async def _send_cancel_over(self, link: AgentLink, job_id: str) -> None:
        await link.send_text(JobCancel(job_id=job_id).model_dump_json())
        self._cancels_sent.setdefault(link, set()).add(job_id)

    async def cancel_waiting(self, *, only_unsent: bool = False) -> None:
        """Ask again for every cancellation on record of a job on a host connected here: after
        the bus was away, when a cancel wake-up may have been missed. The periodic catch-up
        (`only_unsent`) skips those already sent over the same connection, so a lost wake-up
        costs a sweep period and a delivered one no second message (docs/adr/0050)."""
        online = self._presence.online_ids()
        ids: list[str] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(online), _CHUNK):
                ids += (
                    await conn.execute(
                        select(jobs.c.id).where(
                            jobs.c.host_id.in_(online[start : start + _CHUNK]),
                            jobs.c.cancel_requested_by.is_not(None),
                            jobs.c.state.in_(UNFINISHED),
                        )
                    )
                ).scalars()
        if ids:
            await self.cancel_here(ids, only_unsent=only_unsent)

    # -- what agents report --------------------------------------------------------------------

    async def on_status(self, host_id: str, status: JobStatus) -> None:
        """Record an acknowledgement from `host_id`'s agent and confirm final states to it.

        A final state is confirmed (JobAck) only once it and its outcome record are committed:
        until then the agent keeps the result in its journal and reports it again."""
        if status.state in FINAL_AGENT_STATES:
            try:
                recorded = await self._endings.submit(status.job_id, (host_id, status))
            except Exception as exc:
                if is_storage_full(exc):
                    self._faults.count("ending", exc)
                else:
                    log.exception("Could not record how job %s ended", status.job_id)
                # Not acknowledged: the agent keeps it; the sweeper tries again meanwhile.
                self._unrecorded[status.job_id] = (host_id, status)
                return
            self._unrecorded.pop(status.job_id, None)
            if status.job_id in recorded:
                link = self._presence.link(host_id)
                if link is not None:
                    await link.send_text(JobAck(job_ids=[status.job_id]).model_dump_json())
            return
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.host_id, jobs.c.state, jobs.c.sent_at).where(
                        jobs.c.id == status.job_id
                    )
                )
            ).one_or_none()
            # Only the agent a job was sent to may report on it.
            own = row is not None and row.host_id == host_id
            changes = _progress(row, status) if row is not None and own else {}
            if row is not None and changes:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == status.job_id, jobs.c.state == row.state)
                    .values(**changes)
                )
        if not own:
            await self._misbehaviour.note(host_id, JOB_STATUS, status.job_id)
        elif changes:
            self._events.notify(status.job_id)

    async def _record_endings(self, reports: dict[str, tuple[str, JobStatus]]) -> set[str]:
        """Record final states agents reported, each with its outcome record, in one audit
        transaction; returns the jobs whose ending is on record (now or already before)."""
        now = utcnow()
        ids = list(reports)
        rows: dict[str, Any] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                query = select(
                    jobs.c.id, jobs.c.host_id, jobs.c.action, jobs.c.state, jobs.c.sent_at
                ).where(jobs.c.id.in_(ids[start : start + _CHUNK]))
                for found in await conn.execute(query):
                    rows[found.id] = found
        endings: list[Ending] = []
        on_record: set[str] = set()
        for job_id, (host_id, status) in reports.items():
            row: Any = rows.get(job_id)
            if row is None:
                log.warning(
                    "Host %s reported how job %s ended, a job this platform does not know (one "
                    "from after the backup it was restored from, or a made-up id); refused.",
                    host_id,
                    job_id,
                )
            if row is None or row.host_id != host_id:
                # Only the agent a job was sent to may report on it.
                await self._misbehaviour.note(host_id, JOB_STATUS, job_id)
                continue
            if row.state in FINAL_STATES:
                on_record.add(job_id)  # a report sent again: confirm it once more
                continue
            ending = _ending(row, status, now)
            check = self._result_checks.get(row.action)
            problem = (
                check(job_id, json.loads(ending.result))
                if ending is not None and ending.result is not None and check is not None
                else None
            )
            if ending is not None:
                ending = self._with_losses(ending)
            if ending is not None and problem is not None:
                ending = Ending(
                    job_id=job_id,
                    state="failed",
                    error=problem,
                    reported_by="agent",
                    stamps=ending.stamps,
                )
            if ending is not None:
                endings.append(ending)
        if endings:
            async with self._audit.transaction() as tx:
                finished = await end_jobs(tx, endings, source="endpoint", now=now)
                await self._commit_with(tx, finished)
            for job in finished:
                self._lost.pop(job.job_id, None)
                on_record.add(job.job_id)
                self._events.notify(job.job_id)
                await self._announce(job)
        return on_record

    async def on_output(self, host_id: str, message: JobOutput) -> None:
        """Store one piece of output from `host_id`'s agent, within the job's limits."""
        text = message.text
        fields = json.dumps(message.fields, separators=(",", ":")) if message.fields else None
        size = len(text or "") + len(fields or "")
        try:
            if not await self._store_output(host_id, message, text, fields, size):
                await self._misbehaviour.note(host_id, JOB_OUTPUT, message.job_id)
                return
        except Exception as exc:
            if not is_storage_full(exc):
                raise
            # Said in the job's ending, never silent; the agent still holds it in its journal
            # and sends it again after a reconnect, when the piece is stored after all.
            self._faults.count("output", exc)
            self._faults.output_lost_bytes += size
            self._lost[message.job_id] = self._lost.get(message.job_id, 0) + size
            return
        self._events.notify(message.job_id)

    async def _store_output(
        self, host_id: str, message: JobOutput, text: str | None, fields: str | None, size: int
    ) -> bool:
        """Store the piece; False when the job is not the host's own."""
        now = utcnow()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        jobs.c.host_id, jobs.c.state, jobs.c.output_bytes, jobs.c.output_count
                    ).where(jobs.c.id == message.job_id)
                )
            ).one_or_none()
            if row is None or row.host_id != host_id:
                return False
            if row.state in FINAL_STATES:
                # Its outcome record covers the output stored when it ended; nothing is added.
                log.warning(
                    "Host %s sent output for job %s after it ended", host_id, message.job_id
                )
                return True
            if (
                row.output_bytes + size > self._limits.max_bytes
                or row.output_count >= self._limits.max_pieces
            ):
                await self._note_dropped(conn, message.job_id, now)
                return True
            stored = await conn.execute(
                insert_ignoring_duplicates(conn, job_output).values(
                    job_id=message.job_id,
                    seq=message.seq,
                    stream=message.stream,
                    text=text,
                    fields=fields,
                    created_at=now,
                )
            )
            if stored.rowcount:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == message.job_id)
                    .values(
                        output_bytes=jobs.c.output_bytes + size,
                        output_count=jobs.c.output_count + 1,
                    )
                )
        return True

    async def _note_dropped(self, conn: AsyncConnection, job_id: str, now: datetime) -> None:
        # Sequence -1 is the platform's own notice, stored once per job. It counts as a stored
        # piece, so the job's outcome record hashes it with the rest (job_outcomes.end_jobs).
        stored = await conn.execute(
            insert_ignoring_duplicates(conn, job_output).values(
                job_id=job_id,
                seq=-1,
                stream="notice",
                text=(
                    f"The platform keeps at most {self._limits.max_bytes} bytes and "
                    f"{self._limits.max_pieces} pieces of output per job; the rest was dropped."
                ),
                fields=None,
                created_at=now,
            )
        )
        if stored.rowcount:
            await conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(output_count=jobs.c.output_count + 1)
            )

    # -- time ----------------------------------------------------------------------------------

    async def run_sweeper(self, interval: float) -> None:
        """Expire, fail the silent, and pick up jobs queued by other processes, forever."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.record_unrecorded()
                await self.sweep()
                await self.dispatch_waiting()
            except Exception:
                log.exception("The job sweeper failed; it will try again.")

    async def record_unrecorded(self) -> None:
        """Try again to record final reports that storage refused, and confirm them."""
        waiting, self._unrecorded = self._unrecorded, {}
        for host_id, status in waiting.values():
            await self.on_status(host_id, status)

    async def sweep(self, now: datetime | None = None) -> int:
        """Expire queued jobs past their time and fail delivered ones silent past their limit."""
        now = now or utcnow()
        ended: dict[str, tuple[str, str]] = {}
        async with self._engine.connect() as conn:
            stale = await conn.execute(
                select(jobs.c.id, jobs.c.expires_at, jobs.c.not_after).where(
                    jobs.c.state == "queued",
                    or_(
                        jobs.c.expires_at < now,
                        and_(jobs.c.not_after.is_not(None), jobs.c.not_after < now),
                    ),
                )
            )
            for queued in stale:
                reason = _expired_reason(queued, now)
                if reason is not None:
                    ended[queued.id] = ("expired", reason)
            silent = await conn.execute(
                select(
                    jobs.c.id,
                    jobs.c.state,
                    jobs.c.timeout_seconds,
                    jobs.c.delivered_at,
                    jobs.c.started_at,
                    jobs.c.sent_at,
                    jobs.c.host_id,
                    jobs.c.action,
                    jobs.c.created_by,
                    batches.c.args,
                )
                .join(batches, batches.c.id == jobs.c.batch_id)
                .where(jobs.c.state.in_(("delivered", "running")))
            )
            silent_ended: dict[str, tuple[str, str]] = {}
            for row in silent:
                since = as_utc(row.started_at) or as_utc(row.delivered_at) or as_utc(row.sent_at)
                if since is None:
                    continue
                if since + timedelta(seconds=row.timeout_seconds) + REPORT_GRACE < now:
                    grace = int(REPORT_GRACE.total_seconds() // 60)
                    where = (
                        "The agent"
                        if self._presence.is_online(row.host_id)
                        else "The host went offline and"
                    )
                    silent_ended[row.id] = (
                        "failed",
                        f"{where} reported no result within the job's time limit "
                        f"({row.timeout_seconds:g} s) and {grace} more minutes; what became of "
                        "the job on the endpoint is unknown.",
                    )
        if ended:
            await self._end_queued(ended, now)
        if silent_ended:
            await self._end(
                [Ending(job_id=j, state=st, error=r) for j, (st, r) in silent_ended.items()], now
            )
        others = 0
        for extra in self._sweeps:
            others += await extra(now)
        return len(ended) + len(silent_ended) + others


def _is_response(action: str) -> bool:
    spec = ACTIONS.get(action)
    # An action this platform does not declare is treated as one: fail closed.
    return spec is None or spec.response


def _progress(row: Any, status: JobStatus) -> dict[str, Any]:
    """The column changes a progress report (delivered, running) makes, or nothing when it is
    stale or the state machine does not allow it."""
    if row.state == "queued" and row.sent_at is None:
        return {}  # never sent: nothing the agent says about it can be true
    if not can_move(row.state, status.state):
        return {}
    now = utcnow()
    changes: dict[str, Any] = {"state": status.state}
    if row.state == "queued":
        changes["delivered_at"] = now
    if status.state == "running":
        changes["started_at"] = now
    return changes


def _ending(row: Any, status: JobStatus, now: datetime) -> Ending | None:
    """The ending an agent's final report makes, its result checked against the action's
    declared model; None when the report cannot be true."""
    if row.state == "queued" and row.sent_at is None:
        return None  # never sent: nothing the agent says about it can be true
    if not can_move(row.state, status.state):
        log.warning(
            "Refused to move job %s from %s to %s: the job state machine does not allow it.",
            status.job_id,
            row.state,
            status.state,
        )
        return None
    stamps = {"delivered_at": now} if row.state == "queued" else {}
    if status.state != "succeeded":
        return Ending(
            job_id=status.job_id,
            state=status.state,
            error=status.error,
            reported_by="agent",
            stamps=stamps,
        )
    spec = ACTIONS.get(row.action)
    try:
        if spec is None:
            raise ValueError("no such action")
        result = spec.result.model_validate(status.result or {})
    except (ValidationError, ValueError) as exc:
        problem = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        return Ending(
            job_id=status.job_id,
            state="failed",
            error=f"The agent's result for {row.action} is not valid ({problem}), so it was discarded.",
            reported_by="agent",
            stamps=stamps,
        )
    return Ending(
        job_id=status.job_id,
        state="succeeded",
        error=status.error,
        result=result.model_dump_json(),
        reported_by="agent",
        stamps=stamps,
    )
