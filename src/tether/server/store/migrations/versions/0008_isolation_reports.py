"""What each agent last reported about its isolation (docs/adr/0017).

Revision ID: 0008_isolation_reports
Revises: 0007_files
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_isolation_reports"
down_revision: str | None = "0007_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("isolation_reported", sa.Text, nullable=True))
    op.add_column(
        "hosts", sa.Column("isolation_reported_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("isolation_reported_at")
        batch.drop_column("isolation_reported")
