"""Identity: MFA, external (MDR) users, session stages, recovery codes, login attempts, settings.

Revision ID: 0002_identity
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_identity"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN, never batch mode: on SQLite batch mode copies the table and drops the
    # old one, and with foreign keys on, dropping `users` cascades into `user_roles` and
    # `sessions`, wiping every role. NOT NULL columns carry a server default so existing rows
    # (and SQLite's ADD COLUMN) accept them.
    op.add_column(
        "users", sa.Column("external", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column("users", sa.Column("organisation", sa.String(128), nullable=True))
    op.add_column("users", sa.Column("access_expires_at", TS, nullable=True))
    op.add_column("users", sa.Column("mfa_secret", sa.Text, nullable=True))
    op.add_column("users", sa.Column("mfa_pending_secret", sa.Text, nullable=True))
    op.add_column("users", sa.Column("mfa_last_step", sa.BigInteger, nullable=True))
    op.add_column(
        "sessions", sa.Column("stage", sa.String(16), nullable=False, server_default="full")
    )
    op.add_column(
        "sessions",
        sa.Column("mfa_verified", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "sessions", sa.Column("failed_codes", sa.Integer, nullable=False, server_default="0")
    )
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("used_at", TS, nullable=True),
    )
    op.create_index("ix_recovery_codes_user_id", "recovery_codes", ["user_id"])
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
    )
    op.create_index("ix_login_attempts_username", "login_attempts", ["username"])
    op.create_index("ix_login_attempts_address", "login_attempts", ["address"])
    op.create_index("ix_login_attempts_at", "login_attempts", ["at"])
    op.create_table(
        "platform_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("platform_settings")
    op.drop_table("login_attempts")
    op.drop_table("recovery_codes")
    # ALTER TABLE DROP COLUMN (SQLite 3.35+), not batch mode: see upgrade().
    for name in ("failed_codes", "mfa_verified", "stage"):
        op.drop_column("sessions", name)
    for name in (
        "mfa_last_step",
        "mfa_pending_secret",
        "mfa_secret",
        "access_expires_at",
        "organisation",
        "external",
    ):
        op.drop_column("users", name)
