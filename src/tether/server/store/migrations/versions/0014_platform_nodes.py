"""Platform processes (nodes) and which one holds each agent's connection (docs/adr/0044).

Revision ID: 0014_platform_nodes
Revises: 0013_enrollment_token_revocation
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_platform_nodes"
down_revision: str | None = "0013_enrollment_token_revocation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "platform_nodes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("node_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("node_id")
    op.drop_table("platform_nodes")
