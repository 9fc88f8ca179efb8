"""The file library: uploaded tools and retrieved files with their chain of custody.

Revision ID: 0007_files
Revises: 0006_live_sessions
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_files"
down_revision: str | None = "0006_live_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "library_files",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("host_id", sa.String(36), sa.ForeignKey("hosts.id"), nullable=True),
        sa.Column("source_path", sa.Text, nullable=True),
        sa.Column("file_mtime", sa.DateTime(timezone=True), nullable=True),
        sa.Column("file_owner", sa.String(128), nullable=True),
        sa.Column("file_mode", sa.String(16), nullable=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=True, index=True),
        sa.Column("transfer_id", sa.String(36), nullable=True, unique=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_library_files_name", "library_files", ["name"])
    op.create_index("ix_library_files_sha256", "library_files", ["sha256"])
    op.create_index("ix_library_files_created_at", "library_files", ["created_at"])


def downgrade() -> None:
    op.drop_table("library_files")
