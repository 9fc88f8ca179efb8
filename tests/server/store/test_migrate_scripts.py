"""Migration 0005_scripts can be undone and redone; the rest of the schema is left alone."""

from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from tether.server.store.db import sqlite_url, sync_url
from tether.server.store.migrate import alembic_config, upgrade
from tether.server.store.tables import script_versions, scripts

from .test_migrate import _to


def test_downgrade_and_upgrade_again_on_sqlite(tmp_path: Path) -> None:
    url = sqlite_url(str(tmp_path / "t.db"))
    upgrade(url)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.downgrade(config, "0004_jobs")
            tables = set(inspect(conn).get_table_names())
            assert not tables & {"scripts", "script_versions"}
            assert {"jobs", "batches", "hosts"} <= tables
            command.upgrade(config, "head")
            inspector = inspect(conn)
            for table in (scripts, script_versions):
                columns = {c["name"] for c in inspector.get_columns(table.name)}
                assert columns == {c.name for c in table.columns}
            uniques = {
                tuple(u["column_names"])
                for u in inspector.get_unique_constraints("script_versions")
            }
            assert ("script_id", "version") in uniques
            head = ScriptDirectory.from_config(config).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        engine.dispose()


async def test_down_and_up_on_each_backend(db_url: str) -> None:
    _to(db_url, "0004_jobs")
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            assert "scripts" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
    _to(db_url, "head")
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            assert {"scripts", "script_versions"} <= set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
