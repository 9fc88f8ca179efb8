"""Bring a database to the newest schema with Alembic, from the first table on."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from tether.server.store.db import sync_url, tune_sync_engine

MIGRATIONS = Path(__file__).parent / "migrations"


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
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
