"""Signed agent upgrades (docs/adr/0051): a rollout and its hosts, each with its job and outcome.

Revision ID: 0019_agent_upgrades
Revises: 0018_node_names
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_agent_upgrades"
down_revision: str | None = "0018_node_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_upgrades",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("max_parallel", sa.Integer, nullable=False),
        sa.Column("selection", sa.String(128), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_upgrades_created_at", "agent_upgrades", ["created_at"])
    op.create_table(
        "agent_upgrade_hosts",
        sa.Column(
            "upgrade_id", sa.String(36), sa.ForeignKey("agent_upgrades.id"), primary_key=True
        ),
        sa.Column("host_id", sa.String(36), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_agent_upgrade_hosts_job_id", "agent_upgrade_hosts", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_agent_upgrade_hosts_job_id", table_name="agent_upgrade_hosts")
    op.drop_table("agent_upgrade_hosts")
    op.drop_index("ix_agent_upgrades_created_at", table_name="agent_upgrades")
    op.drop_table("agent_upgrades")
