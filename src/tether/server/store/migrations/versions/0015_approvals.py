"""Four-eyes approval per segment and action class (docs/adr/0039): the segment's setting and
timeout, the approvals table, and room in jobs.state for `awaiting_approval`.

Revision ID: 0015_approvals
Revises: 0014_platform_nodes
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_approvals"
down_revision: str | None = "0014_platform_nodes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "segments", sa.Column("approval", sa.String(16), nullable=False, server_default="off")
    )
    op.add_column(
        "segments",
        sa.Column("approval_timeout_seconds", sa.Integer, nullable=False, server_default="86400"),
    )
    # "awaiting_approval" is 17 characters. SQLite does not enforce a VARCHAR's length, and
    # rebuilding its largest table for nothing would slow every upgrade.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("jobs", "state", type_=sa.String(32), existing_nullable=False)
    op.create_table(
        "approvals",
        sa.Column("batch_id", sa.String(36), sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_user_id", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_user_id", sa.Integer, nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_approvals_state", "approvals", ["state"])


def downgrade() -> None:
    op.drop_index("ix_approvals_state", table_name="approvals")
    op.drop_table("approvals")
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("jobs", "state", type_=sa.String(16), existing_nullable=False)
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("approval_timeout_seconds")
        batch.drop_column("approval")
