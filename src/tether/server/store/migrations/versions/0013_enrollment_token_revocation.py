"""Enrollment tokens can be revoked (issue 18): when and by whom; a revoked token enrolls nothing.

Revision ID: 0013_enrollment_token_revocation
Revises: 0012_service_tokens
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_enrollment_token_revocation"
down_revision: str | None = "0012_service_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_tokens") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_by", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollment_tokens") as batch:
        batch.drop_column("revoked_by")
        batch.drop_column("revoked_at")
