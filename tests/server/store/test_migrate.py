"""Migrations: the schema comes from Alembic on both backends, and upgrading twice is harmless."""

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Connection, create_engine, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.audit import GENESIS_HASH
from tether.server.store.db import sync_url, tune_sync_engine
from tether.server.store.migrate import alembic_config, upgrade
from tether.server.store.tables import audit_head, metadata, sessions, user_roles, users


def schema(conn: Connection) -> dict[str, set[str]]:
    inspector = inspect(conn)
    return {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in inspector.get_table_names()
    }


async def test_migrated_schema_matches_the_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        found = await conn.run_sync(schema)
    assert set(found) == set(metadata.tables) | {"alembic_version"}
    for table in metadata.sorted_tables:
        assert found[table.name] == {c.name for c in table.columns}, table.name


async def test_chain_head_starts_at_genesis_and_upgrade_is_idempotent(
    db_url: str, engine: AsyncEngine
) -> None:
    upgrade(db_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(audit_head))).all()
    assert [(r.id, r.seq, r.hash) for r in rows] == [(1, 0, GENESIS_HASH)]


def _to(url: str, revision: str) -> None:
    engine = create_engine(sync_url(url))
    tune_sync_engine(engine)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            if revision == "head":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        engine.dispose()


async def test_identity_migration_keeps_existing_users_roles_and_sessions(
    db_url: str, engine: AsyncEngine
) -> None:
    _to(db_url, "0001")
    await engine.dispose()  # cached connections may know the old schema
    now = datetime(2030, 1, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (username, password_hash, disabled, created_at) "
                "VALUES ('old', 'x', false, :now)"
            ),
            {"now": now},
        )
        await conn.execute(text("INSERT INTO user_roles (user_id, role) VALUES (1, 'admin')"))
        await conn.execute(
            text(
                "INSERT INTO sessions (token_hash, user_id, client, source, created_at, "
                "last_used_at, expires_at) VALUES ('h', 1, 'cli', 's', :now, :now, :now)"
            ),
            {"now": now},
        )
    await engine.dispose()
    _to(db_url, "head")
    async with engine.connect() as conn:
        user = (await conn.execute(select(users))).one()
        session = (await conn.execute(select(sessions))).one()
        roles = (await conn.execute(select(user_roles.c.role))).scalars().all()
    # SQLite batch mode would have rebuilt `users` and cascaded the drop into these two.
    assert roles == ["admin"]
    assert (user.username, user.external, user.mfa_secret, user.mfa_last_step) == (
        "old",
        False,
        None,
        None,
    )
    assert (session.stage, session.mfa_verified, session.failed_codes) == ("full", False, 0)
