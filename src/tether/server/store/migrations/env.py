"""Alembic environment: runs on the connection handed in by `tether.server.store.migrate`."""

from alembic import context
from sqlalchemy import create_engine

from tether.server.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    # Invoked from the alembic command line (for authoring migrations): open our own.
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    with create_engine(url).begin() as own:
        context.configure(connection=own, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
