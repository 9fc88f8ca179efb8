"""CA rotation (docs/adr/0048): which CA issued each host's certificate, and the certificate a
host was given under the new CA until it connects with it.

Revision ID: 0016_ca_rollover
Revises: 0019_agent_upgrades
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_ca_rollover"
down_revision: str | None = "0019_agent_upgrades"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: issued before this was kept (by the CA of that time).
    op.add_column("hosts", sa.Column("cert_ca", sa.String(64), nullable=True))
    op.add_column("hosts", sa.Column("next_cert_serial", sa.String(64), nullable=True))
    # An index, not a constraint: SQLite cannot add a UNIQUE column to an existing table.
    op.create_index(op.f("ix_hosts_next_cert_serial"), "hosts", ["next_cert_serial"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_hosts_next_cert_serial"), table_name="hosts")
    op.drop_column("hosts", "next_cert_serial")
    op.drop_column("hosts", "cert_ca")
