"""Bring a database to the newest schema with Alembic, from the first table on."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from tether.server.errors import ConfigurationError
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
            refuse_newer(MigrationContext.configure(connection).get_current_revision())
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def known_revisions() -> set[str]:
    """Every schema revision this Tether's migrations know."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {script.revision for script in scripts.walk_revisions()}


def refuse_newer(revision: str | None) -> None:
    """One sentence when `revision` (a database's, or a backup's) comes from a newer Tether:
    migrations only go forward, and this code cannot read a schema it has never seen."""
    if revision and revision not in known_revisions():
        raise ConfigurationError(
            f"The database was made by a newer Tether (schema {revision}); run that version or "
            "a newer one, since downgrades are not supported."
        )
