"""Migration 0003_segments can be undone and redone on a database that holds hosts."""

from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from tether.server.store.db import sqlite_url, sync_url
from tether.server.store.migrate import alembic_config, upgrade


def test_downgrade_and_upgrade_again_on_sqlite(tmp_path: Path) -> None:
    url = sqlite_url(str(tmp_path / "t.db"))
    upgrade(url)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.downgrade(config, "0002_identity")
            columns = {c["name"] for c in inspect(conn).get_columns("hosts")}
            assert "response_disabled_locally" not in columns
            command.upgrade(config, "head")
            columns = {c["name"] for c in inspect(conn).get_columns("hosts")}
            assert "response_disabled_locally" in columns
            assert "ix_hosts_segment_id" in {i["name"] for i in inspect(conn).get_indexes("hosts")}
            head = ScriptDirectory.from_config(config).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        engine.dispose()
