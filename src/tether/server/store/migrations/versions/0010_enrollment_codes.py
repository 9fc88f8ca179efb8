"""One-time enrollment codes, the pending secret's session, and when a session last passed its
second factor (docs/adr/0034).

Revision ID: 0010_enrollment_codes
Revises: 0009_bound_results
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_enrollment_codes"
down_revision: str | None = "0009_bound_results"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enrollment_codes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("issued_by", sa.String(128), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("users", sa.Column("mfa_pending_session", sa.String(64), nullable=True))
    op.add_column(
        "sessions", sa.Column("mfa_verified_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("mfa_verified_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("mfa_pending_session")
    op.drop_table("enrollment_codes")
