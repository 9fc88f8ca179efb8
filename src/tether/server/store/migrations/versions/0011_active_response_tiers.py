"""Active Response tiers (docs/adr/0037): every holder of the old single `responder` role now
holds the `script` tier, which can do what `responder` could. Each change is kept in
`role_migrations` until the platform's first start writes it to the audit chain (a migration
runs before the chain's signer is loaded, so it cannot append to the chain itself).

Revision ID: 0011_active_response_tiers
Revises: 0010_enrollment_codes
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_active_response_tiers"
down_revision: str | None = "0010_enrollment_codes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "role_migrations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("from_role", sa.String(32), nullable=False),
        sa.Column("to_role", sa.String(32), nullable=False),
        # The audit record that reported this change; None until the first start wrote it.
        sa.Column("record_seq", sa.BigInteger, nullable=True),
    )
    op.execute(
        "INSERT INTO role_migrations (username, from_role, to_role) "
        "SELECT users.username, 'responder', 'script' FROM users "
        "JOIN user_roles ON user_roles.user_id = users.id WHERE user_roles.role = 'responder' "
        "ORDER BY users.username"
    )
    op.execute("UPDATE user_roles SET role = 'script' WHERE role = 'responder'")


def downgrade() -> None:
    op.execute("UPDATE user_roles SET role = 'responder' WHERE role = 'script'")
    op.execute("DELETE FROM user_roles WHERE role IN ('collect', 'respond')")
    op.drop_table("role_migrations")
