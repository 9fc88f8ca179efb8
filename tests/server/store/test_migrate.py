"""Migrations: the schema comes from Alembic on both backends, and upgrading twice is harmless."""

from sqlalchemy import Connection, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.audit import GENESIS_HASH
from tether.server.store.migrate import upgrade
from tether.server.store.tables import audit_head, metadata


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
