"""Bring a database to the newest schema with Alembic, from the first table on."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from tether.server.store.db import sync_url, tune_sync_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# The advisory lock that serialises migrations on PostgreSQL ("tether" in ASCII).
_LOCK_KEY = 0x746574686572


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Apply every migration not yet applied to the database at `url`."""
    engine = create_engine(sync_url(url))
    tune_sync_engine(engine)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Several platform processes may start at once on one database (a split
                # platform, docs/adr/0044): one migrates, the others wait and find nothing to do.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
