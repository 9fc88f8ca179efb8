"""Several platform nodes (docs/adr/0050): each node's name, shown in the hosts list beside the
agents it holds, and the id of the file store it uses, so a node can tell at start whether the
other nodes see the same files.

Revision ID: 0018_node_names
Revises: 0020_agent_package_links
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_node_names"
down_revision: str | None = "0020_agent_package_links"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("platform_nodes") as batch:
        batch.add_column(sa.Column("name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("file_store", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("platform_nodes") as batch:
        batch.drop_column("file_store")
        batch.drop_column("name")
