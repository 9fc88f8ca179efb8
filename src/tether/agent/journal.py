"""The agent's durable record of the jobs it was given: what ran, what it reported, what is owed.

A job is written here before its delivery is acknowledged, so a job id the agent has seen is
never run again, whatever reconnects or resends happen (DESIGN.md section 3). A finished job's
status and its output stay here until the platform acknowledges it has stored them; after a
reconnect the agent sends them again, and the platform ignores what it already has.

SQLite in WAL mode with `synchronous=NORMAL`: every committed write survives the agent process
being killed; a power cut may lose the last few writes, which the platform then sees as a job
that never reported and fails after its time limit (docs/adr/0010).
"""

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tether.protocol import FINAL_AGENT_STATES, JobOutput, JobStatus

RESTARTED = "The agent restarted while this job was running, so it did not finish."

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status TEXT,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS output (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
-- Temporary files of files being received: a crash leaves them behind, the next start removes
-- them (their jobs end failed by then).
CREATE TABLE IF NOT EXISTS partials (
    path TEXT PRIMARY KEY,
    job_id TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class JournaledJob:
    job_id: str
    action: str
    state: str
    status: JobStatus | None


class Journal:
    """One SQLite file in the agent's state directory."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, job_id: str) -> JournaledJob | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, action, state, status FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        status = JobStatus.model_validate_json(row[3]) if row[3] else None
        return JournaledJob(job_id=row[0], action=row[1], state=row[2], status=status)

    def receive(self, job_id: str, action: str) -> bool:
        """Record a new job as delivered; False when the id was already journaled."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO jobs (id, action, state, received_at) "
                "VALUES (?, ?, 'delivered', ?)",
                (job_id, action, _now()),
            )
            return cursor.rowcount == 1

    def set_running(self, job_id: str) -> bool:
        """Move a delivered job to running; False if it had meanwhile ended (a cancel)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'running' WHERE id = ? AND state = 'delivered'",
                (job_id,),
            )
            return cursor.rowcount == 1

    def finish(self, status: JobStatus) -> JobStatus:
        """Record the final status unless the job already has one; returns the one that holds."""
        if status.state not in FINAL_AGENT_STATES:
            raise ValueError(f"{status.state} is not a final state")
        with self._tx() as db:
            row = db.execute("SELECT state, status FROM jobs WHERE id = ?", (status.job_id,))
            found = row.fetchone()
            if found is not None and found[0] in FINAL_AGENT_STATES and found[1]:
                return JobStatus.model_validate_json(found[1])
            db.execute(
                "INSERT INTO jobs (id, action, state, received_at, status) "
                "VALUES (?, '', ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET state = excluded.state, status = excluded.status",
                (status.job_id, status.state, _now(), status.model_dump_json()),
            )
        return status

    def add_output(self, message: JobOutput) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO output (job_id, seq, message) VALUES (?, ?, ?)",
                (message.job_id, message.seq, message.model_dump_json()),
            )

    def output_of(self, job_id: str) -> list[JobOutput]:
        with self._lock:
            rows = self._db.execute(
                "SELECT message FROM output WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [JobOutput.model_validate_json(r[0]) for r in rows]

    def acknowledge(self, job_ids: list[str]) -> None:
        """The platform stored these jobs' final states: drop their output, keep the ids."""
        with self._tx() as db:
            for job_id in job_ids:
                db.execute(
                    "UPDATE jobs SET acked = 1, status = NULL WHERE id = ? AND state IN "
                    "('succeeded', 'failed', 'timed_out', 'cancelled')",
                    (job_id,),
                )
                db.execute("DELETE FROM output WHERE job_id = ?", (job_id,))

    def unacknowledged(self) -> list[JobStatus]:
        """Final statuses the platform has not confirmed, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status FROM jobs WHERE acked = 0 AND status IS NOT NULL "
                "ORDER BY received_at"
            ).fetchall()
        return [JobStatus.model_validate_json(r[0]) for r in rows]

    def fail_interrupted(self) -> int:
        """At agent start: jobs left delivered or running by a previous process end failed."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN ('delivered', 'running')"
            ).fetchall()
            for (job_id,) in rows:
                status = JobStatus(job_id=job_id, state="failed", error=RESTARTED)
                db.execute(
                    "UPDATE jobs SET state = 'failed', status = ? WHERE id = ?",
                    (status.model_dump_json(), job_id),
                )
        return len(rows)

    def add_partial(self, path: Path, job_id: str) -> None:
        """Remember a temporary file about to be written, before it exists."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO partials (path, job_id) VALUES (?, ?)", (str(path), job_id)
            )

    def drop_partial(self, path: Path) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM partials WHERE path = ?", (str(path),))

    def partials(self) -> list[tuple[Path, str]]:
        """Temporary files a previous process left registered, with their jobs."""
        with self._lock:
            rows = self._db.execute("SELECT path, job_id FROM partials ORDER BY path").fetchall()
        return [(Path(r[0]), str(r[1])) for r in rows]

    def purge(self, older_than: timedelta) -> int:
        """Forget acknowledged job ids older than the platform could ever resend them."""
        cutoff = (datetime.now(UTC) - older_than).isoformat()
        with self._tx() as db:
            cursor = db.execute("DELETE FROM jobs WHERE acked = 1 AND received_at < ?", (cutoff,))
            return cursor.rowcount
