"""Stored results bound to the audit chain (docs/adr/0030): the check that a job's row, result
and output and a library file's metadata still match the records written when they were stored.

`tether audit verify` runs `check_all` after walking the chain; the job page and `tether job
show` ask `job_problem`, the Files pages `file_problem`. Jobs and files stored before this
binding existed are covered as a whole: the first start of a platform that binds results records
how many there were and a SHA-256 over them, so editing one of them is caught too.
"""

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import FINAL_STATES
from tether.server.services.audit import AuditLog, AuditRecord
from tether.server.services.job_outcomes import OUTCOME_ACTION, binding_problem, result_sha256
from tether.server.store.db import as_utc
from tether.server.store.tables import audit_records, jobs, library_files

UNBOUND_ACTION = "audit.unbound"
_PAGE = 500


def _iso(value: datetime | None) -> str | None:
    moment = as_utc(value)
    return moment.isoformat() if moment is not None else None


def file_binding(row: Any) -> dict[str, Any]:
    """A library file's metadata as its record holds it."""
    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "sha256": row.sha256,
        "size": int(row.size),
        "host": row.host_id,
        "path": row.source_path,
        "mtime": _iso(row.file_mtime),
        "owner": row.file_owner,
        "mode": row.file_mode,
        "job": row.job_id,
        "transfer": row.transfer_id,
        "created_by": row.created_by,
        "created_at": _iso(row.created_at),
    }


def file_problem_of(row: Any, record: AuditRecord | None) -> str | None:
    if row.record_seq is None:
        return None
    seq = int(row.record_seq)
    if record is None:
        return f"Library file {row.id}'s audit record {seq} is missing from the audit log."
    if record.details_object().get("library") != file_binding(row):
        return f"Library file {row.id}'s stored metadata no longer matches its audit record {seq}."
    return None


def _record(row: Any) -> AuditRecord | None:
    """The audit record joined onto a row (columns prefixed `r_`), if there was one."""
    if row.r_seq is None:
        return None
    return AuditRecord(
        seq=row.r_seq,
        ts=row.r_ts,
        actor=row.r_actor,
        action=row.r_action,
        target=row.r_target,
        outcome=row.r_outcome,
        source=row.r_source,
        details=row.r_details,
        prev_hash=row.r_prev_hash,
        hash=row.r_hash,
    )


_RECORD_COLUMNS = [c.label(f"r_{c.name}") for c in audit_records.c]


class ResultBindings:
    def __init__(self, engine: AsyncEngine, audit: AuditLog) -> None:
        self._engine = engine
        self._audit = audit

    async def job_problem(self, job_id: str) -> str | None:
        """Why job `job_id`'s stored result no longer matches its outcome record, or None."""
        query = (
            select(jobs, *_RECORD_COLUMNS)
            .outerjoin(audit_records, audit_records.c.seq == jobs.c.outcome_seq)
            .where(jobs.c.id == job_id)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
            if row is None:
                return None
            return await binding_problem(conn, row, _record(row))

    async def file_problem(self, file_id: str) -> str | None:
        query = (
            select(library_files, *_RECORD_COLUMNS)
            .outerjoin(audit_records, audit_records.c.seq == library_files.c.record_seq)
            .where(library_files.c.id == file_id)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return file_problem_of(row, _record(row)) if row is not None else None

    async def check_all(self) -> tuple[int | None, str] | None:
        """The first stored result that no longer matches its record: (record seq, sentence)."""
        async with self._engine.connect() as conn:
            async for row in _pages(conn, jobs, jobs.c.outcome_seq):
                problem = await binding_problem(conn, row, _record(row))
                if problem is not None:
                    return int(row.outcome_seq), problem
            async for row in _pages(conn, library_files, library_files.c.record_seq):
                problem = file_problem_of(row, _record(row))
                if problem is not None:
                    return int(row.record_seq), problem
            orphan = (
                await conn.execute(
                    select(audit_records.c.seq, audit_records.c.target)
                    .outerjoin(jobs, jobs.c.outcome_seq == audit_records.c.seq)
                    .where(audit_records.c.action == OUTCOME_ACTION, jobs.c.id.is_(None))
                    .order_by(audit_records.c.seq)
                    .limit(1)
                )
            ).one_or_none()
            if orphan is not None:
                job_id = orphan.target.removeprefix("job:")
                return int(orphan.seq), (
                    f"Job {job_id} was deleted or unlinked from its outcome record {orphan.seq}."
                )
            unbound = await self._unbound_summary(conn)
            marker = (
                await conn.execute(
                    select(audit_records.c.seq, audit_records.c.details)
                    .where(audit_records.c.action == UNBOUND_ACTION)
                    .order_by(audit_records.c.seq)
                    .limit(1)
                )
            ).one_or_none()
        if marker is None:
            if unbound["jobs"] or unbound["files"]:
                return None, (
                    f"{unbound['jobs']} ended jobs and {unbound['files']} library files are not "
                    "bound to any audit record."
                )
            return None
        recorded = json.loads(marker.details)
        if recorded != unbound:
            return int(marker.seq), (
                "Jobs or library files stored before results were bound to the audit log were "
                f"changed, added or deleted since record {marker.seq} counted them."
            )
        return None

    async def record_unbound(self) -> None:
        """At start: the first time, record the jobs and files stored before binding existed."""
        async with self._audit.transaction() as tx:
            found = (
                await tx.conn.execute(
                    select(audit_records.c.seq)
                    .where(audit_records.c.action == UNBOUND_ACTION)
                    .limit(1)
                )
            ).scalar()
            if found is not None:
                return
            summary = await self._unbound_summary(tx.conn)
            await tx.record(UNBOUND_ACTION, actor="platform", source="platform", details=summary)

    async def _unbound_summary(self, conn: AsyncConnection) -> dict[str, Any]:
        """Counts and a SHA-256 over the ended jobs and library files no record binds."""
        job_digest = hashlib.sha256()
        job_count = 0
        query = (
            select(jobs.c.id, jobs.c.state, jobs.c.error, jobs.c.result, jobs.c.finished_at)
            .where(jobs.c.outcome_seq.is_(None), jobs.c.state.in_(sorted(FINAL_STATES)))
            .order_by(jobs.c.id)
        )
        for row in await conn.execute(query):
            line = [row.id, row.state, row.error, result_sha256(row.result), _iso(row.finished_at)]
            job_digest.update(json.dumps(line).encode() + b"\n")
            job_count += 1
        file_digest = hashlib.sha256()
        file_count = 0
        files = select(library_files).where(library_files.c.record_seq.is_(None))
        for row in await conn.execute(files.order_by(library_files.c.id)):
            file_digest.update(json.dumps(file_binding(row), sort_keys=True).encode() + b"\n")
            file_count += 1
        return {
            "jobs": job_count,
            "jobs_sha256": job_digest.hexdigest(),
            "files": file_count,
            "files_sha256": file_digest.hexdigest(),
        }


async def _pages(conn: AsyncConnection, table: Any, seq_column: Any) -> AsyncIterator[Any]:
    """Rows of `table` that name a record, joined with it, page by page in record order."""
    after = 0
    while True:
        rows = (
            await conn.execute(
                select(table, *_RECORD_COLUMNS)
                .outerjoin(audit_records, audit_records.c.seq == seq_column)
                .where(and_(seq_column.is_not(None), seq_column > after))
                .order_by(seq_column)
                .limit(_PAGE)
            )
        ).all()
        for row in rows:
            yield row
        if len(rows) < _PAGE:
            return
        after = int(getattr(rows[-1], seq_column.name))
