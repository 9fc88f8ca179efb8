"""The agent's durable record of the jobs it was given: what ran, what it reported, what is owed.

A job is written here before its delivery is acknowledged, so a job id the agent has seen is
never run again, whatever reconnects or resends happen (DESIGN.md section 3). A finished job's
status and its output stay here until the platform acknowledges it has stored them; after a
reconnect the agent sends them again, and the platform ignores what it already has.

SQLite in WAL mode with `synchronous=NORMAL`: every committed write survives the agent process
being killed; a power cut may lose the last few writes, which the platform then sees as a job
that never reported and fails after its time limit (docs/adr/0010).

For the next start to tell the truth about jobs a killed agent left (docs/adr/0031) it also
holds each script's process (pid, process group, create time) before the script may run, and
the agent's last sign of life while jobs run.
"""

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tether.agent.state_guard import UnsafeStateDir, restrict_existing
from tether.protocol import FINAL_AGENT_STATES, JobOutput, JobStatus

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
-- A script job's child process, written before the child may start the script; exit_code is set
-- once the agent saw it end.
CREATE TABLE IF NOT EXISTS script_processes (
    job_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pgid INTEGER,
    create_time REAL NOT NULL,
    exit_code INTEGER
);
-- Descendants of a script's child, as the run's snapshots saw them.
CREATE TABLE IF NOT EXISTS script_descendants (
    job_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    create_time REAL NOT NULL,
    PRIMARY KEY (job_id, pid, create_time)
);
-- One row: the last moment the agent was known alive while jobs ran.
CREATE TABLE IF NOT EXISTS life (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    alive_at TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class ScriptProcess:
    """A script's child process as the journal knows it.

    `create_time` is psutil's, so a pid the system later gave to another process is told apart;
    `pgid` is the process group the child leads (None on Windows).
    """

    pid: int
    pgid: int | None
    create_time: float
    exit_code: int | None = None
    # (pid, create time) of the descendants the run's snapshots saw.
    descendants: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class JournaledJob:
    job_id: str
    action: str
    state: str
    status: JobStatus | None


def _create_private(path: Path) -> None:
    """Make the journal file owner-only before SQLite opens it (docs/adr/0033).

    It holds job arguments and output (script text, results). SQLite creates `-wal` and `-shm`
    with the mode of the database file, so creating that one 0600, exclusively and never
    through a planted link, makes all three 0600; a journal an older agent left 0644 is
    tightened, its WAL files with it.
    """
    flags = (
        os.O_RDWR
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_BINARY", 0)
    )
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            # A link there would have SQLite write the journal (and its WAL) somewhere else.
            raise UnsafeStateDir(
                f"{path} is not a regular file, so the agent will not use it as its journal; "
                "remove it."
            ) from None
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            restrict_existing(path.with_name(name))


class Journal:
    """One SQLite file in the agent's state directory."""

    def __init__(self, path: Path) -> None:
        _create_private(path)
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
        """Move a delivered job to running; False if it had meanwhile ended (a cancel).

        A start is also a sign of life (`mark_alive`): a crash soon after is then dated by it.
        """
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'running' WHERE id = ? AND state = 'delivered'",
                (job_id,),
            )
            if cursor.rowcount != 1:
                return False
            db.execute("INSERT OR REPLACE INTO life (id, alive_at) VALUES (1, ?)", (_now(),))
            return True

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
                db.execute("DELETE FROM script_processes WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM script_descendants WHERE job_id = ?", (job_id,))

    def unacknowledged(self) -> list[JobStatus]:
        """Final statuses the platform has not confirmed, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status FROM jobs WHERE acked = 0 AND status IS NOT NULL "
                "ORDER BY received_at"
            ).fetchall()
        return [JobStatus.model_validate_json(r[0]) for r in rows]

    def unfinished(self) -> list[JournaledJob]:
        """Jobs a previous agent process left delivered or running, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, action, state FROM jobs WHERE state IN ('delivered', 'running') "
                "ORDER BY received_at"
            ).fetchall()
        return [JournaledJob(job_id=r[0], action=r[1], state=r[2], status=None) for r in rows]

    def back_to_delivered(self, job_id: str) -> None:
        """A running job whose work never began (no script process started): it may run later."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'delivered' WHERE id = ? AND state = 'running'", (job_id,)
            )

    def record_process(self, job_id: str, process: ScriptProcess) -> None:
        """Remember a script's child before it may run the script (committed on return)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO script_processes (job_id, pid, pgid, create_time) "
                "VALUES (?, ?, ?, ?)",
                (job_id, process.pid, process.pgid, process.create_time),
            )

    def record_exit(self, job_id: str, exit_code: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE script_processes SET exit_code = ? WHERE job_id = ?", (exit_code, job_id)
            )

    def record_descendants(self, job_id: str, seen: dict[int, float]) -> None:
        """Remember processes a script started (pid -> create time)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO script_descendants (job_id, pid, create_time) "
                "VALUES (?, ?, ?)",
                [(job_id, pid, created) for pid, created in seen.items()],
            )

    def process_of(self, job_id: str) -> ScriptProcess | None:
        with self._lock:
            row = self._db.execute(
                "SELECT pid, pgid, create_time, exit_code FROM script_processes WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            descendants = self._db.execute(
                "SELECT pid, create_time FROM script_descendants WHERE job_id = ? ORDER BY pid",
                (job_id,),
            ).fetchall()
        if row is None:
            return None
        return ScriptProcess(
            pid=row[0],
            pgid=row[1],
            create_time=row[2],
            exit_code=row[3],
            descendants=tuple((int(d[0]), float(d[1])) for d in descendants),
        )

    def mark_alive(self, at: datetime | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO life (id, alive_at) VALUES (1, ?)",
                ((at or datetime.now(UTC)).isoformat(),),
            )

    def last_alive(self) -> datetime | None:
        """When the agent last said it was alive while jobs ran; None if it never did."""
        with self._lock:
            row = self._db.execute("SELECT alive_at FROM life WHERE id = 1").fetchone()
        return datetime.fromisoformat(row[0]) if row is not None else None

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
        """Forget job ids older than the platform could ever resend them.

        Acknowledged ones, and delivered ones the platform never sent again (it ended them
        itself, long ago, as silent past their time limit).
        """
        cutoff = (datetime.now(UTC) - older_than).isoformat()
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM jobs WHERE (acked = 1 OR state = 'delivered') AND received_at < ?",
                (cutoff,),
            )
            db.execute("DELETE FROM script_processes WHERE job_id NOT IN (SELECT id FROM jobs)")
            return cursor.rowcount
