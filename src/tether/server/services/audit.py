"""The append-only, hash-chained audit log and its signed checkpoints (DESIGN.md section 7).

Each record carries the SHA-256 of the previous one over a canonical encoding, so editing or
deleting any record breaks the chain at that point. A chain cannot show its newest records cut off,
nor a chain recomputed end to end by someone who can write the database; so after every append
the platform signs the new head (sequence number and hash) with an Ed25519 key kept in the data
directory, outside the database, and `verify` checks the chain against that signed checkpoint.

Records written on their own (`AuditLog.record`) are committed in groups (docs/adr/0053): the
records that arrive while one group is being written are written together in the next
transaction, whose head is signed once; each caller still returns only once its own record is
committed, so no action answers before its record is durable.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, false, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server.errors import Unavailable
from tether.server.services.audit_statements import (
    RESTORE,
    ROTATE_KEY,
    statement_note,
    statement_problem,
)
from tether.server.services.checkpoints import Checkpoint, CheckpointSigner
from tether.server.store.db import utcnow
from tether.server.store.tables import audit_head, audit_records

GENESIS_HASH = "0" * 64
log = logging.getLogger(__name__)
_PAGE = 1000
# The most records one group commit writes; more wait for the next group (a burst of thousands
# must not make one transaction, and one file of parameters, that large).
GROUP_LIMIT = 500

__all__ = [
    "GENESIS_HASH",
    "AuditLog",
    "AuditRecord",
    "AuditSearch",
    "AuditTransaction",
    "Checkpoint",
    "CheckpointSigner",
    "VerifyReport",
]


@dataclass(frozen=True)
class AuditRecord:
    """One record as stored; `hash` covers every other field."""

    seq: int
    ts: str
    actor: str
    action: str
    target: str
    outcome: str
    source: str
    details: str
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The record for export: details decoded back into an object."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "source": self.source,
            "details": json.loads(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def details_object(self) -> dict[str, Any]:
        """The details as an object ({} if they are not one)."""
        try:
            parsed = json.loads(self.details) if self.details else {}
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


def canonical_details(details: dict[str, Any] | None) -> str:
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class PendingRecord:
    """A record's own fields, bounded and encoded, before it has a place in the chain."""

    actor: str
    action: str
    target: str
    outcome: str
    source: str
    details: str

    @classmethod
    def of(
        cls,
        action: str,
        *,
        actor: str,
        target: str,
        outcome: str,
        source: str,
        details: dict[str, Any] | None,
    ) -> "PendingRecord":
        return cls(
            actor=actor[:128],
            action=action[:64],
            target=target[:255],
            outcome=outcome[:16],
            source=source[:128],
            details=canonical_details(details),
        )


@dataclass(frozen=True)
class _Queued:
    """A record waiting for its group, and how its caller hears that it was committed."""

    entry: PendingRecord
    committed: "asyncio.Future[AuditRecord]"


def record_hash(
    *,
    seq: int,
    ts: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    source: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON encoding of every field but the hash itself."""
    body = json.dumps(
        {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "source": source,
            "details": details,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class AuditSearch:
    """What to look for in the log; empty fields match everything. `actor` and `target` match
    anywhere in the field, `action` at its start (so "auth." finds every login record)."""

    actor: str = ""
    target: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None
    # Any of these anywhere in the target or the details (a host's name and ids: a job's
    # submission names its hosts in the details, not the target).
    mentions: tuple[str, ...] = ()
    # Filters that contradict each other (an action of another kind than the one chosen).
    nothing: bool = False


def _narrowed(query: Select[Any], search: AuditSearch) -> Select[Any]:
    """`query` limited to the records `search` describes."""
    if search.nothing:
        return query.where(false())
    if search.actor:
        query = query.where(audit_records.c.actor.contains(search.actor, autoescape=True))
    if search.target:
        query = query.where(audit_records.c.target.contains(search.target, autoescape=True))
    if search.action:
        query = query.where(audit_records.c.action.startswith(search.action, autoescape=True))
    if search.mentions:
        query = query.where(
            or_(
                *(
                    audit_records.c.target.contains(m, autoescape=True)
                    | audit_records.c.details.contains(m, autoescape=True)
                    for m in search.mentions
                )
            )
        )
    if search.since is not None:
        query = query.where(audit_records.c.ts >= search.since.isoformat())
    if search.until is not None:
        query = query.where(audit_records.c.ts < search.until.isoformat())
    return query


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of walking the whole chain."""

    intact: bool
    records: int
    head_seq: int
    head_hash: str
    checkpoint_seq: int | None
    first_bad_seq: int | None
    problem: str
    # Plain sentences about genuine records that change how the log reads (a restore, a key
    # rotation), oldest first.
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "notes": list(self.notes)}


class AuditLog:
    """Appends records to the chain and verifies it."""

    def __init__(
        self,
        engine: AsyncEngine,
        signer: CheckpointSigner,
        clock: Callable[[], datetime] = utcnow,
        *,
        group_limit: int = GROUP_LIMIT,
    ) -> None:
        self._engine = engine
        self._signer = signer
        self._clock = clock
        # SQLite cannot upgrade a read transaction to a write one under contention; serialise
        # appends in this process, and let PostgreSQL's row lock serialise across processes.
        self._lock = asyncio.Lock()
        self._for_update = engine.dialect.name == "postgresql"
        self._owner: asyncio.Task[Any] | None = None
        # Records of `record` waiting for the next group commit, and the task writing groups.
        self._queue: list[_Queued] = []
        self._group_writer: asyncio.Task[None] | None = None
        self._group_limit = max(1, group_limit)
        # Checks that what is stored outside the chain still matches it (services/bindings.py).
        self._checks: list[Callable[[], Awaitable[tuple[int | None, str] | None]]] = []

    def add_check(self, check: Callable[[], Awaitable[tuple[int | None, str] | None]]) -> None:
        """Run `check` in `verify` after the chain itself verified: it answers the first stored
        thing that no longer matches its record, as (record seq or None, one sentence)."""
        self._checks.append(check)

    async def record(
        self,
        action: str,
        *,
        actor: str,
        target: str = "",
        outcome: str = "success",
        source: str = "",
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record on its own; returns the stored record once it is committed.

        For a record that describes a state change, use `transaction` so both commit together.
        Records written on their own are committed in groups: whatever arrives while a group is
        being written goes into the next one, one transaction and one signed checkpoint for all
        of them; each caller returns only when its own record is committed (or raises what
        stopped its group). A record written on its own describes something already done (or an
        attempt), so a checkpoint that cannot be written does not stop it: the record is kept,
        and the next append that can write the checkpoint signs it (the chain still extends the
        old one)."""
        task = asyncio.current_task()
        if task is not None and task is self._owner:
            # Its group waits for the lock this task holds.
            raise RuntimeError("An audit transaction is already open in this task.")
        entry = PendingRecord.of(
            action, actor=actor, target=target, outcome=outcome, source=source, details=details
        )
        committed: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(entry, committed))
        if self._group_writer is None or self._group_writer.done():
            self._group_writer = asyncio.create_task(self._write_groups())
        # A caller that gives up (a client gone) does not take its record back: it is written
        # with its group all the same.
        return await asyncio.shield(committed)

    async def _write_groups(self) -> None:
        """Commit the waiting records, a group at a time, until none wait."""
        while self._queue:
            limit = self._group_limit
            group, self._queue = self._queue[:limit], self._queue[limit:]
            try:
                async with self.transaction(checkpoint_required=False) as tx:
                    stored = [await tx.append(queued.entry) for queued in group]
            except Exception as exc:
                for queued in group:
                    if not queued.committed.done():
                        queued.committed.set_exception(exc)
                continue
            except BaseException:
                # Cancelled (the process stops): nobody is left to write these or the rest.
                for queued in [*group, *self._queue]:
                    queued.committed.cancel()
                self._queue = []
                raise
            for queued, record in zip(group, stored, strict=True):
                if not queued.committed.done():
                    queued.committed.set_result(record)

    @asynccontextmanager
    async def transaction(
        self, *, checkpoint_required: bool = True
    ) -> AsyncIterator["AuditTransaction"]:
        """One database transaction for state changes and the records that describe them.

        Both commit together or not at all: the new head's checkpoint is signed and written to
        disk before the commit, so when it cannot be written the transaction rolls back and
        `Unavailable` says why (unless `checkpoint_required` is False: then the records commit
        and the checkpoint waits for the next append); the checkpoint is put in place after the
        commit. Appends are
        serialised by a process lock (SQLite cannot upgrade a read transaction under contention)
        and by PostgreSQL's row lock on the head across processes; each process prepares its
        checkpoint in a file of its own and publishes only over an older one (docs/adr/0044)."""
        task = asyncio.current_task()
        if task is not None and task is self._owner:
            # A nested append would wait forever on the lock its own task holds.
            raise RuntimeError("An audit transaction is already open in this task.")
        async with self._lock:
            self._owner = task
            try:
                prepared: Checkpoint | None = None
                async with self._engine.begin() as conn:
                    tx = AuditTransaction(self, conn)
                    yield tx
                    await tx.flush()
                    if tx.last is not None and tx.extends:
                        try:
                            prepared = self._signer.prepare(
                                tx.last.seq, tx.last.hash, self._clock()
                            )
                        except Unavailable:
                            if checkpoint_required:
                                raise
                            log.error(
                                "Record %d is kept without a new checkpoint; the next append "
                                "that can write one signs it.",
                                tx.last.seq,
                            )
                if prepared is not None:
                    self._signer.publish(prepared)
                elif tx.last is not None and not tx.extends:
                    # Signing now would bless a chain that was cut off or rewritten (or whose
                    # anchor was removed) and erase the evidence: keep the old checkpoint.
                    log.error(
                        "The audit chain no longer extends the signed checkpoint; not signing "
                        "record %d. Run 'tether audit verify'.",
                        tx.last.seq,
                    )
            finally:
                self._owner = None

    async def _head(self, conn: AsyncConnection) -> tuple[int, str, bool]:
        """The head (seq, hash) under lock, and whether it extends the signed checkpoint."""
        checkpoint = self._signer.latest()
        query = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        if self._for_update:
            query = query.with_for_update()
        head = (await conn.execute(query)).one()
        extends = await self._extends_checkpoint(conn, checkpoint, int(head.seq))
        return int(head.seq), str(head.hash), extends

    async def _extends_checkpoint(
        self, conn: AsyncConnection, checkpoint: Checkpoint | None, head_seq: int
    ) -> bool:
        """True when the chain in the database still contains the last signed head."""
        if checkpoint is None:
            return head_seq == 0
        if checkpoint.seq > head_seq or not self._signer.is_genuine(checkpoint):
            return False
        signed = (
            await conn.execute(
                select(audit_records.c.hash).where(audit_records.c.seq == checkpoint.seq)
            )
        ).scalar()
        return signed == checkpoint.hash

    def now(self) -> datetime:
        return self._clock()

    async def iter_records(
        self, after_seq: int = 0, limit: int | None = None
    ) -> AsyncIterator[AuditRecord]:
        """Records in chain order, read page by page so memory stays flat."""
        seen = 0
        cursor = after_seq
        while limit is None or seen < limit:
            page = _PAGE if limit is None else min(_PAGE, limit - seen)
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(audit_records)
                        .where(audit_records.c.seq > cursor)
                        .order_by(audit_records.c.seq)
                        .limit(page)
                    )
                ).all()
            if not rows:
                return
            for row in rows:
                yield AuditRecord(**row._asdict())
            seen += len(rows)
            cursor = int(rows[-1].seq)

    async def record_at(self, seq: int) -> AuditRecord | None:
        """The record with sequence number `seq`, if the log holds one."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(audit_records).where(audit_records.c.seq == seq))
            ).one_or_none()
        return AuditRecord(**row._asdict()) if row is not None else None

    @property
    def signer(self) -> CheckpointSigner:
        return self._signer

    async def newest(
        self, search: "AuditSearch", limit: int = 200, *, before: int | None = None
    ) -> list[AuditRecord]:
        """Records matching `search`, newest first (the Session History view); with `before`,
        only those older than that sequence number (the next page)."""
        query = _narrowed(select(audit_records), search)
        if before is not None:
            query = query.where(audit_records.c.seq < before)
        query = query.order_by(audit_records.c.seq.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [AuditRecord(**row._asdict()) for row in rows]

    async def matching(self, search: "AuditSearch") -> AsyncIterator[AuditRecord]:
        """Every record matching `search` in chain order, read page by page (an export)."""
        cursor = 0
        while True:
            query = _narrowed(select(audit_records), search).where(audit_records.c.seq > cursor)
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query.order_by(audit_records.c.seq).limit(_PAGE))).all()
            if not rows:
                return
            for row in rows:
                yield AuditRecord(**row._asdict())
            cursor = int(rows[-1].seq)

    async def export(self, search: "AuditSearch | None" = None) -> AsyncIterator[bytes]:
        """The matching records (all without `search`) as JSON lines in chain order, the format
        of `GET /api/v1/audit/export` and the Session History's Export link alike."""
        records = self.iter_records() if search is None else self.matching(search)
        async for record in records:
            yield (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode()

    async def action_families(self) -> list[str]:
        """The first words of the actions in the log ("auth", "job", "file", ...), sorted."""
        async with self._engine.connect() as conn:
            actions = (await conn.execute(select(audit_records.c.action).distinct())).scalars()
            return sorted({a.split(".", 1)[0] for a in actions})

    async def mentioning(
        self, needles: tuple[str, ...], *, action_prefix: str, limit: int = 1000
    ) -> list[AuditRecord]:
        """Records whose action starts with `action_prefix` and whose target or details contain
        any of `needles` (ids, hashes), oldest first, at most `limit`; the caller decides which
        really match."""
        search = AuditSearch(action=action_prefix, mentions=needles)
        query = _narrowed(select(audit_records), search).order_by(audit_records.c.seq).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [AuditRecord(**row._asdict()) for row in rows]

    async def verify(self) -> VerifyReport:
        """Walk the chain from the first record and check it against the signed checkpoint."""
        prev = GENESIS_HASH
        expected = 1
        count = 0
        hash_at: dict[int, str] = {}
        notes: list[str] = []
        checkpoint = self._signer.latest()

        def broken(seq: int | None, problem: str) -> VerifyReport:
            return VerifyReport(
                intact=False,
                records=count,
                head_seq=expected - 1,
                head_hash=prev,
                checkpoint_seq=checkpoint.seq if checkpoint else None,
                first_bad_seq=seq,
                problem=problem,
            )

        async for rec in self.iter_records():
            if rec.seq != expected:
                return broken(expected, f"Record {expected} is missing: it was deleted.")
            if rec.prev_hash != prev:
                return broken(rec.seq, f"Record {rec.seq} does not follow record {rec.seq - 1}.")
            fields = {k: v for k, v in rec.__dict__.items() if k != "hash"}
            if record_hash(**fields) != rec.hash:
                return broken(rec.seq, f"Record {rec.seq} was altered after it was written.")
            if rec.action.startswith("platform."):
                details = rec.details_object()
                problem = statement_problem(
                    self._signer, rec.seq, rec.prev_hash, rec.action, details
                )
                if problem is not None:
                    return broken(rec.seq, problem)
                note = statement_note(rec.seq, rec.action, details)
                if note is not None:
                    notes.append(note)
            if checkpoint is not None and rec.seq == checkpoint.seq:
                hash_at[rec.seq] = rec.hash
            prev = rec.hash
            expected += 1
            count += 1

        head_seq = expected - 1
        if checkpoint is None:
            if head_seq > 0:
                return broken(None, "There is no signed checkpoint to check the newest records.")
        elif not self._signer.is_genuine(checkpoint):
            return broken(None, "The signed checkpoint is damaged or its signature does not match.")
        elif checkpoint.seq > head_seq:
            return broken(
                head_seq + 1,
                f"The newest records were cut off: the signed checkpoint covers record "
                f"{checkpoint.seq} but the log ends at record {head_seq}.",
            )
        elif hash_at.get(checkpoint.seq, GENESIS_HASH) != checkpoint.hash:
            return broken(
                checkpoint.seq,
                f"The chain was rewritten: record {checkpoint.seq} does not match the signed "
                "checkpoint.",
            )
        for check in self._checks:
            found = await check()
            if found is not None:
                seq, problem = found
                return broken(seq, problem)
        return VerifyReport(
            intact=True,
            records=count,
            head_seq=head_seq,
            head_hash=prev,
            checkpoint_seq=checkpoint.seq if checkpoint else None,
            first_bad_seq=None,
            problem="",
            notes=tuple(notes),
        )

    async def restores(self) -> list[AuditRecord]:
        """The restore records in the log, oldest first."""
        return await self._of_action(RESTORE)

    async def key_rotations(self) -> list[AuditRecord]:
        """The audit key rotation records in the log, oldest first."""
        found = await self._of_action(ROTATE_KEY)
        return [r for r in found if r.details_object().get("key") == "audit"]

    async def _of_action(self, action: str) -> list[AuditRecord]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(audit_records)
                    .where(audit_records.c.action == action)
                    .order_by(audit_records.c.seq)
                )
            ).all()
        return [AuditRecord(**row._asdict()) for row in rows]


class AuditTransaction:
    """The open transaction of `AuditLog.transaction`: `conn` for the state changes, `record`
    for the records that describe them, in the same commit."""

    def __init__(self, log: AuditLog, conn: AsyncConnection) -> None:
        self._log = log
        self.conn = conn
        self.last: AuditRecord | None = None
        self.extends = True
        self._head: tuple[int, str] | None = None
        # Records appended but not yet written: written together, with one head update, before
        # the commit (a fan-out's endings are thousands of records in one transaction).
        self._pending: list[dict[str, Any]] = []

    async def flush(self) -> None:
        """Write the records appended so far (done before the commit; needed only before reading
        this transaction's own records back)."""
        if not self._pending or self.last is None:
            return
        await self.conn.execute(insert(audit_records), self._pending)
        await self.conn.execute(
            update(audit_head)
            .where(audit_head.c.id == 1)
            .values(seq=self.last.seq, hash=self.last.hash)
        )
        self._pending = []

    async def _current_head(self) -> tuple[int, str]:
        if self._head is None:
            seq, head_hash, self.extends = await self._log._head(self.conn)
            self._head = (seq, head_hash)
        return self._head

    async def next_seq(self) -> int:
        """The sequence number the next `record` in this transaction gets (a row can name its
        record before the record is written). The first call takes the head's lock: from then on
        no other audit transaction can interleave."""
        seq, _ = await self._current_head()
        return seq + 1

    async def record(
        self,
        action: str,
        *,
        actor: str,
        target: str = "",
        outcome: str = "success",
        source: str = "",
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record in this transaction (it commits with the transaction)."""
        return await self.append(
            PendingRecord.of(
                action, actor=actor, target=target, outcome=outcome, source=source, details=details
            )
        )

    async def append(self, entry: PendingRecord) -> AuditRecord:
        """Give `entry` the next place in the chain (written at the flush before the commit)."""
        seq, head_hash = await self._current_head()
        fields: dict[str, Any] = {
            "seq": seq + 1,
            "ts": self._log.now().isoformat(),
            "actor": entry.actor,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
            "source": entry.source,
            "details": entry.details,
            "prev_hash": head_hash,
        }
        stored = AuditRecord(**fields, hash=record_hash(**fields))
        self._pending.append(dict(stored.__dict__))
        self._head = (stored.seq, stored.hash)
        self.last = stored
        return stored
