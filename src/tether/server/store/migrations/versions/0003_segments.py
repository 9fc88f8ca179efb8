"""Segments you can manage: the local Active Response switch of each host, hosts by segment.

Revision ID: 0003_segments
Revises: 0002_identity
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_segments"
down_revision: str | None = "0002_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A server default so existing rows get a value; the agent reports the truth at its next hello.
    op.add_column(
        "hosts",
        sa.Column(
            "response_disabled_locally", sa.Boolean, nullable=False, server_default=sa.false()
        ),
    )
    op.create_index("ix_hosts_segment_id", "hosts", ["segment_id"])


def downgrade() -> None:
    op.drop_index("ix_hosts_segment_id", table_name="hosts")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("response_disabled_locally")
