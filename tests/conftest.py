"""Fixtures shared by the in-process tests: a migrated database on each supported backend.

`db_url` is parametrized over SQLite and PostgreSQL, so every store and service test runs on both.
PostgreSQL is the server named by TETHER_TEST_POSTGRES (default: postgres@127.0.0.1:5432/test);
each test session creates its own database there and drops it at the end. When the server cannot
be reached the PostgreSQL cases are skipped with the reason, except under CI=true, where they fail.
"""

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.audit import GENESIS_HASH
from tether.server.store.db import create_engine, sqlite_url
from tether.server.store.migrate import upgrade
from tether.server.store.tables import audit_head, metadata

# pytest-xdist's workers start with COLUMNS=80 in their environment, and rich fixes a console's
# width from COLUMNS when the console is made (tether.cli.output's, at import): every CLI test in
# that worker would then fold at 80 columns whatever width it asks for.
os.environ.pop("COLUMNS", None)

POSTGRES_ENV = "TETHER_TEST_POSTGRES"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated database for this test session on the PostgreSQL test server."""
    server = make_url(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES)
    shown = server.render_as_string(hide_password=True)
    try:
        admin = psycopg.connect(_conninfo(str(server)), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        reason = f"PostgreSQL at {shown} is unreachable ({detail}); set {POSTGRES_ENV}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}. CI=true: the PostgreSQL tests must run.", pytrace=False)
        pytest.skip(reason)
    name = f"tether_test_{secrets.token_hex(6)}"
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # Durability is not under test: skip the WAL flush on each commit of this throwaway DB.
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name))
        )
        url = server.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
        upgrade(url)
        yield url
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A database of this test's own on the PostgreSQL test server, empty (not migrated: the
    platform under test migrates it), dropped afterwards."""
    yield from _fresh_postgres()


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """`fresh_postgres_url` for a whole module (a cluster of platform nodes it shares)."""
    yield from _fresh_postgres()


def _fresh_postgres() -> Iterator[str]:
    server = make_url(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES)
    try:
        admin = psycopg.connect(_conninfo(str(server)), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        reason = (
            f"PostgreSQL at {server.render_as_string(hide_password=True)} is unreachable ({exc})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}. CI=true: the PostgreSQL tests must run.", pytrace=False)
        pytest.skip(reason)
    name = f"tether_test_{secrets.token_hex(6)}"
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


def _reset_postgres(url: str) -> None:
    """Empty every table and put the audit chain back at its genesis."""
    tables = [t.name for t in metadata.sorted_tables if t is not audit_head]
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)
            )
        )
        conn.execute("UPDATE audit_head SET seq = 0, hash = %s WHERE id = 1", (GENESIS_HASH,))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "tether.db"
    upgrade(sqlite_url(str(path)))
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The async URL of an empty, migrated database on the parametrized backend."""
    if request.param == "sqlite":
        path = tmp_path / "tether.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return sqlite_url(str(path))
    url: str = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def postgres_db_url(postgres_url: str) -> str:
    """The PostgreSQL database alone, emptied, for tests that only make sense there."""
    _reset_postgres(postgres_url)
    return postgres_url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on `db_url`, disposed after the test."""
    created = create_engine(db_url)
    try:
        yield created
    finally:
        await created.dispose()


REDIS_ENV = "TETHER_TEST_REDIS"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server for bus tests (TETHER_TEST_REDIS); skipped with the reason when it does
    not answer, except under CI=true, where that fails."""
    import redis

    url = os.environ.get(REDIS_ENV) or DEFAULT_REDIS
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"Redis at {url} does not answer ({exc}); set {REDIS_ENV}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}. CI=true: the Redis tests must run.", pytrace=False)
        pytest.skip(reason)
    finally:
        client.close()
    return url


@pytest.fixture
def bus_prefix() -> str:
    """A channel and key prefix of this test's own, so parallel runs never hear each other."""
    return f"tether-test-{secrets.token_hex(6)}:"
