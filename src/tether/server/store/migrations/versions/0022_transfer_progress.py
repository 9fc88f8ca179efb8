"""How far a job's file transfer is (docs/adr/0054): bytes moved, the file's size, the recent
rate, and when that was measured, written about once a second by the process that moves it.

Revision ID: 0022_transfer_progress
Revises: 0016_ca_rollover
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_transfer_progress"
down_revision: str | None = "0016_ca_rollover"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("transfer_bytes", sa.BigInteger, nullable=True))
    op.add_column("jobs", sa.Column("transfer_size", sa.BigInteger, nullable=True))
    op.add_column("jobs", sa.Column("transfer_rate", sa.Float, nullable=True))
    op.add_column("jobs", sa.Column("transfer_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("transfer_at")
        batch.drop_column("transfer_rate")
        batch.drop_column("transfer_size")
        batch.drop_column("transfer_bytes")
