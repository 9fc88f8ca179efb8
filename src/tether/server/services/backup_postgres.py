"""The PostgreSQL half of backup and restore: `pg_dump` from an exported snapshot, `pg_restore`
into an empty database (docs/adr/0048-postgresql-backup-faster-restore-ca-rotation.md).

The backup opens a REPEATABLE READ, READ ONLY transaction, exports its snapshot, reads the audit
head and schema revision in it, and runs `pg_dump --snapshot` while that transaction stays open:
the dump and the head the manifest names are the same instant, whatever the platform's nodes
write meanwhile. The dump (custom format) streams into the backup file as one part with its own
SHA-256 in the manifest, never staged on disk.

The restore needs a database that holds nothing yet; `pg_restore --single-transaction` either
loads all of it or nothing. Should a later step fail (the restored log does not verify, the
restore record cannot be appended), every relation the restore created is dropped again, so the
database is as empty as it was given.

The password of a database URL never goes on a command line (`ps` shows those): the tools get
it in their environment (PGPASSWORD).
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tether.server.errors import ConfigurationError
from tether.server.services.backup_archive import POSTGRES_DUMP

DUMP = POSTGRES_DUMP
# Schemas PostgreSQL itself keeps in every database; anything else counts as content.
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
_CONNECT_SECONDS = 10


@dataclass(frozen=True)
class Target:
    """A PostgreSQL database named by a URL: libpq's connection string without the password,
    and the environment the tools need (the password, when there is one)."""

    conninfo: str
    env: dict[str, str]
    shown: str


def target(url: str) -> Target:
    """The connection details of a SQLAlchemy or libpq PostgreSQL URL; one sentence when the URL
    does not name a PostgreSQL database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"{url!r} is not a database URL.") from None
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        raise ConfigurationError(
            "--database-url must name a PostgreSQL database, e.g. "
            "postgresql+psycopg://user@host/tether_restored."
        )
    env = {**os.environ}
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    bare = parsed.set(drivername="postgresql", password=None)
    return Target(
        conninfo=bare.render_as_string(hide_password=False),
        env=env,
        shown=parsed.render_as_string(hide_password=True),
    )


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(
            f"{name} is not installed on this machine; install the postgresql-client package "
            "(of the server's major version or newer)."
        )
    return found


def _connect(where: Target, **options: object) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(
            where.conninfo,
            connect_timeout=_CONNECT_SECONDS,
            password=where.env.get("PGPASSWORD"),
            **options,  # type: ignore[arg-type]
        )
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ConfigurationError(f"Cannot connect to {where.shown} ({detail}).") from exc


@dataclass(frozen=True)
class Snapshot:
    """An open read-only transaction whose snapshot `pg_dump` shares."""

    id: str
    head_seq: int
    head_hash: str
    revision: str
    size: int


@contextmanager
def snapshot(url: str) -> Iterator[Snapshot]:
    """Hold a REPEATABLE READ, READ ONLY transaction open and name its snapshot; the head and
    revision are read inside it, so they are the dump's."""
    where = target(url)
    conn = _connect(where)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        if row is None or head is None:
            raise ConfigurationError(f"{where.shown} holds no Tether audit log.")
        yield Snapshot(
            id=str(row[0]),
            head_seq=int(str(head[0])),
            head_hash=str(head[1]),
            revision=str(revision[0]) if revision else "",
            size=int(str(size[0])) if size else 0,
        )
    finally:
        conn.close()


@contextmanager
def dump(url: str, snapshot_id: str) -> Iterator[IO[bytes]]:
    """`pg_dump --format=custom` of the snapshot, as a stream to read to its end; raises
    ConfigurationError (pg_dump's own last line) when the dump fails."""
    where = target(url)
    command = [
        _tool("pg_dump"),
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        f"--snapshot={snapshot_id}",
        f"--dbname={where.conninfo}",
    ]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, env=where.env, stdin=subprocess.DEVNULL
        )
        stream = process.stdout
        if stream is None:  # never: stdout=PIPE gives one
            raise RuntimeError("pg_dump has no output stream")
        try:
            yield stream
        finally:
            stream.close()
            code = process.wait()
        if code != 0:
            raise ConfigurationError(f"pg_dump failed: {_last_line(errors)}")


def _last_line(errors: IO[bytes]) -> str:
    errors.seek(0)
    lines = [line.strip() for line in errors.read().decode(errors="replace").splitlines()]
    text = next((line for line in reversed(lines) if line), "no reason given")
    return text if text.endswith(".") else text + "."


def check_empty(url: str) -> None:
    """Refuse, in one sentence, a database that holds any table, view or sequence (a restore
    goes into a new database only)."""
    where = target(url)
    with _connect(where) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
            "AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%' "
            "AND n.nspname NOT LIKE 'pg_toast%%'",
            (list(_SYSTEM_SCHEMAS),),
        ).fetchone()
    if row is not None and int(str(row[0])) > 0:
        raise ConfigurationError(
            f"The database {where.shown} is not empty; restore into a new, empty database."
        )


def load(url: str, dump_file: Path) -> None:
    """`pg_restore` the dump into the (empty) database in one transaction: all or nothing."""
    where = target(url)
    command = [
        _tool("pg_restore"),
        "--single-transaction",
        "--exit-on-error",
        "--no-owner",
        "--no-privileges",
        f"--dbname={where.conninfo}",
        str(dump_file),
    ]
    with tempfile.TemporaryFile() as errors:
        code = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=errors, env=where.env, check=False
        ).returncode
        if code != 0:
            raise ConfigurationError(f"pg_restore failed: {_last_line(errors)}")


def empty_again(url: str) -> None:
    """Drop every table, view and sequence outside PostgreSQL's own schemas: undoes a restore
    into a database that `check_empty` found empty."""
    where = target(url)
    with _connect(where, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
            "AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%' "
            "AND n.nspname NOT LIKE 'pg_toast%%'",
            (list(_SYSTEM_SCHEMAS),),
        ).fetchall()
        kinds = {"v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE", "f": "FOREIGN TABLE"}
        for schema, name, kind in rows:
            statement = sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
                sql.SQL(kinds.get(str(kind), "TABLE")),
                sql.Identifier(str(schema)),
                sql.Identifier(str(name)),
            )
            conn.execute(statement)
