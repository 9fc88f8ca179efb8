"""Live response sessions: one audited session per `tether shell`, each command a linked job.

Revision ID: 0006_live_sessions
Revises: 0005_scripts
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_live_sessions"
down_revision: str | None = "0005_scripts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "live_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("host_id", sa.String(36), sa.ForeignKey("hosts.id"), nullable=False),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
        sa.Column("cwd", sa.Text, nullable=True),
    )
    op.create_index("ix_live_sessions_user_ended", "live_sessions", ["user_id", "ended_at"])
    op.create_index(
        "ix_live_sessions_ended_activity", "live_sessions", ["ended_at", "last_activity_at"]
    )
    # A plain ADD COLUMN (no batch mode): SQLite would rebuild `jobs` and cascade into job_output.
    op.add_column("jobs", sa.Column("session_id", sa.String(36), nullable=True))
    op.create_index("ix_jobs_session_id", "jobs", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_session_id", "jobs")
    # ALTER TABLE DROP COLUMN (SQLite 3.35+), not batch mode: see upgrade().
    op.drop_column("jobs", "session_id")
    op.drop_table("live_sessions")
