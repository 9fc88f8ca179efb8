"""Database engines for SQLite (embedded default) and PostgreSQL (scale-out)."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def sqlite_url(path: str) -> str:
    """The async URL of a SQLite database file."""
    return f"sqlite+aiosqlite:///{path}"


def sync_url(url: str) -> str:
    """The synchronous twin of an async URL, for Alembic and one-off tools."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; the busy timeout makes a briefly locked database
    # wait instead of failing; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def tune_sync_engine(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _tune_sqlite)


def create_engine(url: str) -> AsyncEngine:
    """An async engine with the connection settings Tether relies on."""
    if is_sqlite(url):
        # Every aiosqlite connection is a thread of its own, opened and tuned on connect: a pool
        # of 5 closed each connection past the fifth as soon as it was returned, so a burst of
        # concurrent requests paid a new thread and connection each (docs/adr/0053).
        engine = create_async_engine(url, pool_size=20, max_overflow=10)
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to the naive datetimes SQLite returns; pass aware ones through."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT that skips rows whose unique key already exists, on SQLite and PostgreSQL."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
