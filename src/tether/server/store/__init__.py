"""Persistence: the database schema and engine, migrations, and (later) the blob store."""
