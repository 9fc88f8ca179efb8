"""Results bound to the audit chain (docs/adr/0030): a job's outcome record and a library file's
record are named by their sequence numbers; output lost to a full disk is counted.

Revision ID: 0009_bound_results
Revises: 0008_isolation_reports
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_bound_results"
down_revision: str | None = "0008_isolation_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("outcome_seq", sa.BigInteger, nullable=True))
    op.add_column(
        "jobs",
        sa.Column("output_lost_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column("library_files", sa.Column("record_seq", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("library_files") as batch:
        batch.drop_column("record_seq")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("output_lost_bytes")
        batch.drop_column("outcome_seq")
