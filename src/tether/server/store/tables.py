"""The database schema, as SQLAlchemy Core tables; Alembic migrations create exactly this.

Timestamps are stored timezone-aware where the database supports it; SQLite hands them back naive,
so readers go through `tether.server.store.db.as_utc`.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

segments = Table(
    "segments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("active_response", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # MDR provider staff: marked external, with their organisation and an access expiry.
    Column("external", Boolean, nullable=False, default=False),
    Column("organisation", String(128), nullable=True),
    Column("access_expires_at", DateTime(timezone=True), nullable=True),
    # TOTP secrets are sealed (AES-GCM, key file in the data directory), never stored plain.
    Column("mfa_secret", Text, nullable=True),
    Column("mfa_pending_secret", Text, nullable=True),
    # The last accepted TOTP time step: a code for this step or an earlier one is a replay.
    Column("mfa_last_step", BigInteger, nullable=True),
)

user_roles = Table(
    "user_roles",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(32), primary_key=True),
)

sessions = Table(
    "sessions",
    metadata,
    # Only the SHA-256 of the bearer token is stored: a database reader cannot log in with it.
    Column("token_hash", String(64), primary_key=True),
    Column(
        "user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("client", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # "full", "second_factor" (password passed, the code is still owed: only the second login
    # step accepts it) or "enroll" (limited to setting up a second factor).
    Column("stage", String(16), nullable=False, default="full"),
    Column("mfa_verified", Boolean, nullable=False, default=False),
    # Wrong codes tried with a second_factor token; it dies after a few.
    Column("failed_codes", Integer, nullable=False, default=0),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    # SHA-256 of a 50-bit random code: enough entropy that a fast hash is not a weakness.
    Column("code_hash", String(64), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

# Every password and second-factor attempt, kept for an hour or so: the throttles count these,
# so they hold across platform processes sharing one database.
login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, index=True),
    Column("address", String(64), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("success", Boolean, nullable=False),
)

# Platform-wide switches an admin sets at run time (MFA for everyone, external suspension).
platform_settings = Table(
    "platform_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("segment_id", Integer, ForeignKey("segments.id"), nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, default=0),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

hosts = Table(
    "hosts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("hostname", String(255), nullable=False, index=True),
    Column("os_family", String(16), nullable=False, default=""),
    Column("os_name", String(128), nullable=False, default=""),
    Column("os_version", String(128), nullable=False, default=""),
    Column("addresses", Text, nullable=False, default="[]"),
    # Indexed: segment listings count hosts and policy changes find a segment's hosts.
    Column("segment_id", Integer, ForeignKey("segments.id"), nullable=False, index=True),
    Column("cert_serial", String(64), nullable=False, unique=True),
    Column("cert_sha256", String(64), nullable=False),
    Column("agent_version", String(64), nullable=False, default=""),
    Column("protocol_version", Integer, nullable=True),
    Column("boot_time", DateTime(timezone=True), nullable=True),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("enrollment_token_id", Integer, ForeignKey("enrollment_tokens.id"), nullable=True),
    Column("last_seen", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # What the agent last said in its hello: the endpoint owner switched response actions off.
    Column("response_disabled_locally", Boolean, nullable=False, default=False),
)

audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    # Stored as the exact ISO-8601 text that was hashed, so no database can re-render it.
    Column("ts", String(40), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(255), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("source", String(128), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("hash", name="uq_audit_records_hash"),
)

# One row: the chain head. Appenders lock it (SELECT ... FOR UPDATE on PostgreSQL) so that two
# platform processes can never both extend the chain from the same record.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
