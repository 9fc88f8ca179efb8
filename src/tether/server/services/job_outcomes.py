"""What happened to a job, as its own audit record, and the check that what is stored for the job
still matches that record (DESIGN.md section 7, docs/adr/0030).

A job reaches its final state only through `end_jobs`, inside an audit transaction: the state
change and a `job.outcome` record (final state, error, exit code, a SHA-256 over the stored
result and one over the stored output and rows in order) commit together, and the job row names
the record (`jobs.outcome_seq`). Editing or deleting the job's row, result or output afterwards
no longer matches the record, which `binding_problem` (job page, `tether job show`) and
`tether audit verify` report.
"""

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.protocol import OPEN_STATES, can_move
from tether.server.services.audit import AuditRecord, AuditTransaction
from tether.server.services.file_transfers import FinishedJob
from tether.server.store.db import as_utc
from tether.server.store.tables import batches, job_output, jobs

log = logging.getLogger(__name__)

OUTCOME_ACTION = "job.outcome"
# A result up to this size (canonical JSON) is written into the record whole: a kill's per-pid
# outcome, a file's size and hash, the rules an isolation applied, a script's exit code. Larger
# ones (a process list) are bound by their SHA-256 and summarised.
_INLINE_RESULT = 2048
_PAGE = 2000
_EMPTY_SHA256 = hashlib.sha256().hexdigest()
_CHUNK = 500


@dataclass(frozen=True)
class Ending:
    """A job's move to a final state, as decided by its agent's report or by the platform."""

    job_id: str
    state: str
    error: str | None = None
    # The validated result as canonical JSON (what the job row stores).
    result: str | None = None
    reported_by: str = "platform"
    # Other columns the move sets (delivered_at when an agent ends a job it never acknowledged).
    stamps: dict[str, Any] = field(default_factory=dict)
    # Extra facts for the record (the sentence an agent's crash left, the platform's reason).
    facts: dict[str, Any] = field(default_factory=dict)


def result_sha256(result: str | None) -> str | None:
    return hashlib.sha256(result.encode()).hexdigest() if result is not None else None


async def output_digest(conn: AsyncConnection, job_id: str) -> dict[str, Any]:
    """Pieces, characters and a SHA-256 over a job's stored output and rows, in order."""
    digest = hashlib.sha256()
    pieces = size = 0
    after: int | None = None
    while True:
        query = (
            select(job_output.c.seq, job_output.c.stream, job_output.c.text, job_output.c.fields)
            .where(job_output.c.job_id == job_id)
            .order_by(job_output.c.seq)
            .limit(_PAGE)
        )
        if after is not None:
            query = query.where(job_output.c.seq > after)
        rows = (await conn.execute(query)).all()
        for row in rows:
            line = json.dumps(
                [row.seq, row.stream, row.text, row.fields],
                ensure_ascii=False,
                separators=(",", ":"),
            )
            digest.update(line.encode() + b"\n")
            pieces += 1
            size += len(row.text or "") + len(row.fields or "")
        if len(rows) < _PAGE:
            break
        after = int(rows[-1].seq)
    return {"pieces": pieces, "size": size, "sha256": digest.hexdigest()}


_EMPTY: dict[str, Any] = {"pieces": 0, "size": 0, "sha256": _EMPTY_SHA256}


def _outcome(state: str) -> str:
    return "success" if state == "succeeded" else "failure"


def _result_facts(action: str, result: str | None) -> dict[str, Any]:
    if result is None:
        return {}
    facts: dict[str, Any] = {"result_sha256": result_sha256(result)}
    parsed = json.loads(result)
    if len(result) <= _INLINE_RESULT:
        facts["result"] = parsed
    elif isinstance(parsed, dict):
        # The scalars of a large result (counts, exit codes), never its lists.
        facts["result_summary"] = {
            k: v for k, v in parsed.items() if isinstance(v, str | int | float | bool) or v is None
        }
    if isinstance(parsed, dict) and "exit_code" in parsed:
        facts["exit_code"] = parsed["exit_code"]
    return facts


def _row_query() -> Any:
    return select(
        jobs.c.id,
        jobs.c.batch_id,
        jobs.c.host_id,
        jobs.c.action,
        jobs.c.state,
        jobs.c.sent_at,
        jobs.c.created_by,
        jobs.c.output_lost_bytes,
        jobs.c.output_count,
        batches.c.args,
    ).join(batches, batches.c.id == jobs.c.batch_id)


async def end_jobs(
    tx: AuditTransaction, endings: Sequence[Ending], *, source: str, now: datetime
) -> list[FinishedJob]:
    """Move each job to its final state with its outcome record, in `tx`; returns the jobs that
    moved (a job already ended, or one the state machine does not let move, is left alone)."""
    # The head's lock first: every move to a final state happens in an audit transaction, so
    # from here on no other ending can interleave and the states read below stay final or not.
    await tx.next_seq()
    wanted = [e.job_id for e in endings]
    rows: dict[str, Any] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        for found in await tx.conn.execute(_row_query().where(jobs.c.id.in_(chunk))):
            rows[found.id] = found
    ended: list[FinishedJob] = []
    moves: list[dict[str, Any]] = []
    for ending in endings:
        row: Any = rows.get(ending.job_id)
        if row is None:
            continue
        if not can_move(row.state, ending.state):
            log.warning(
                "Refused to move job %s from %s to %s: the job state machine does not allow it.",
                ending.job_id,
                row.state,
                ending.state,
            )
            continue
        # Nothing stored, nothing to read: most jobs of a fan-out print nothing.
        digest = await output_digest(tx.conn, ending.job_id) if row.output_count else _EMPTY
        lost = int(ending.stamps.get("output_lost_bytes") or row.output_lost_bytes or 0)
        details: dict[str, Any] = {
            "job": ending.job_id,
            "batch": row.batch_id,
            "host": row.host_id,
            "action": row.action,
            "state": ending.state,
            "error": ending.error,
            "reported_by": ending.reported_by,
            "finished_at": now.isoformat(),
            "output": digest,
            **_result_facts(row.action, ending.result),
            **ending.facts,
        }
        if lost:
            details["output_lost_bytes"] = lost
        record = await tx.record(
            OUTCOME_ACTION,
            actor=row.created_by,
            target=f"job:{ending.job_id}",
            outcome=_outcome(ending.state),
            source=source,
            details=details,
        )
        rows[ending.job_id] = None  # a second ending of the same job in this call is ignored
        moves.append(
            {
                "b_id": ending.job_id,
                "b_state": ending.state,
                "b_error": ending.error,
                "b_result": ending.result,
                "b_seq": record.seq,
                "b_delivered_at": ending.stamps.get("delivered_at"),
                "b_cancel_requested_by": ending.stamps.get("cancel_requested_by"),
                "b_lost": lost,
            }
        )
        ended.append(
            FinishedJob(
                job_id=ending.job_id,
                host_id=row.host_id,
                action=row.action,
                state=ending.state,
                result=json.loads(ending.result) if ending.result else None,
                error=ending.error,
                created_by=row.created_by,
                args=json.loads(row.args),
            )
        )
    if moves:
        await tx.conn.execute(
            update(jobs)
            # Spelled out: an IN list cannot be used with executemany.
            .where(jobs.c.id == bindparam("b_id"), or_(*(jobs.c.state == s for s in OPEN_STATES)))
            .values(
                state=bindparam("b_state"),
                error=bindparam("b_error"),
                result=bindparam("b_result"),
                finished_at=now,
                outcome_seq=bindparam("b_seq"),
                delivered_at=func.coalesce(bindparam("b_delivered_at"), jobs.c.delivered_at),
                cancel_requested_by=func.coalesce(
                    bindparam("b_cancel_requested_by"), jobs.c.cancel_requested_by
                ),
                output_lost_bytes=bindparam("b_lost"),
            ),
            moves,
        )
    return ended


async def binding_problem(
    conn: AsyncConnection, job: Any, record: AuditRecord | None
) -> str | None:
    """Why the stored job no longer matches its outcome record, in one sentence, or None.

    `job` is a jobs row (with state, error, result, finished_at, outcome_seq); `record` the audit
    record at its outcome_seq (None when there is none)."""
    if job.outcome_seq is None:
        return None
    seq = int(job.outcome_seq)
    if record is None:
        return f"Job {job.id}'s outcome record {seq} is missing from the audit log."
    details = record.details_object()
    if record.action != OUTCOME_ACTION or details.get("job") != job.id:
        return f"Job {job.id} names audit record {seq}, which is not its outcome record."
    if details.get("state") != job.state:
        return (
            f"Job {job.id}'s stored state ({job.state}) no longer matches its audit record {seq} "
            f"({details.get('state')})."
        )
    if details.get("error") != job.error:
        return f"Job {job.id}'s stored error no longer matches its audit record {seq}."
    if details.get("result_sha256") != result_sha256(job.result):
        return f"Job {job.id}'s stored result no longer matches its audit record {seq}."
    finished = as_utc(job.finished_at)
    if finished is None or details.get("finished_at") != finished.isoformat():
        return f"Job {job.id}'s stored end time no longer matches its audit record {seq}."
    if await output_digest(conn, job.id) != details.get("output"):
        return (
            f"Job {job.id}'s stored output no longer matches its audit record {seq}: output "
            "was changed or deleted after the job ended."
        )
    return None
