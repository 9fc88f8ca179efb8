"""The database schema, as SQLAlchemy Core tables; Alembic migrations create exactly this.

Timestamps are stored timezone-aware where the database supports it; SQLite hands them back naive,
so readers go through `tether.server.store.db.as_utc`.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
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
    # Four-eyes approval (docs/adr/0039): "off", "respond" (respond and script actions wait for
    # a second person) or "script" (script actions only), and how long a request may wait.
    Column("approval", String(16), nullable=False, default="off", server_default="off"),
    Column(
        "approval_timeout_seconds", Integer, nullable=False, default=86400, server_default="86400"
    ),
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
    # The session (token hash) that started the pending enrollment: only it may see or confirm
    # the pending secret, so a second login with the password cannot read it.
    Column("mfa_pending_session", String(64), nullable=True),
    # The last accepted TOTP time step: a code for this step or an earlier one is a replay.
    Column("mfa_last_step", BigInteger, nullable=True),
)

user_roles = Table(
    "user_roles",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(32), primary_key=True),
)

# Role changes a migration made (`responder` became `script`), until the platform's first start
# records them in the audit chain (`Team.record_role_migrations`).
role_migrations = Table(
    "role_migrations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    Column("from_role", String(32), nullable=False),
    Column("to_role", String(32), nullable=False),
    Column("record_seq", BigInteger, nullable=True),
)

# Tokens for automation (docs/adr/0038): each acts as "service:NAME" with one tier, in the
# segments named (a JSON list), from the source networks named (a JSON list; empty is any).
service_tokens = Table(
    "service_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("tier", String(16), nullable=False),
    Column("segments", Text, nullable=False),
    Column("sources", Text, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_by", String(128), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("last_used_from", String(64), nullable=True),
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
    # When this session last passed its second factor (login, enrollment or step-up): sensitive
    # changes ask for a fresh code once it is older than the step-up window.
    Column("mfa_verified_at", DateTime(timezone=True), nullable=True),
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

# One-time codes an admin issues (or `tether server enrollment-code` on the platform host) so a
# user can enroll a second factor: the password alone never can. Only the SHA-256 is stored.
enrollment_codes = Table(
    "enrollment_codes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("issued_by", String(128), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
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
    # Revoked tokens stay listed (hosts name the token they enrolled with) but enroll nothing.
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_by", String(64), nullable=True),
)

# Agent packages served on the analyst port (docs/adr/0052): the link's secret only as a hash.
agent_package_links = Table(
    "agent_package_links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("link_hash", String(64), nullable=False, unique=True),
    Column("token_id", Integer, ForeignKey("enrollment_tokens.id"), nullable=False),
    Column("format", String(8), nullable=False),
    Column("filename", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("max_downloads", Integer, nullable=False),
    Column("downloads", Integer, nullable=False, default=0, server_default="0"),
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
    # SHA-256 of the CA certificate that issued cert_serial (NULL: issued before this was kept),
    # and, during a CA rotation, the serial the host was given under the new CA: accepted too
    # until the host connects with it, which makes it cert_serial (docs/adr/0048).
    Column("cert_ca", String(64), nullable=True),
    Column("next_cert_serial", String(64), nullable=True, index=True, unique=True),
    Column("agent_version", String(64), nullable=False, default=""),
    Column("protocol_version", Integer, nullable=True),
    Column("boot_time", DateTime(timezone=True), nullable=True),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("enrollment_token_id", Integer, ForeignKey("enrollment_tokens.id"), nullable=True),
    Column("last_seen", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # What the agent last said in its hello: the endpoint owner switched response actions off.
    Column("response_disabled_locally", Boolean, nullable=False, default=False),
    # What the agent last reported its firewall holds for isolation (IsolationStatus JSON), and
    # when: in its hello, or when a script or the endpoint owner changed it.
    Column("isolation_reported", Text, nullable=True),
    Column("isolation_reported_at", DateTime(timezone=True), nullable=True),
    # The platform process (platform_nodes.id) holding the agent's connection, as last flushed;
    # nodes holding agents write it when the platform has several processes (docs/adr/0044,
    # docs/adr/0050).
    Column("node_id", String(36), nullable=True),
)

# The processes of a split platform, each beating every few seconds: a host whose node stopped
# beating is offline, whatever its node_id says (a node killed with -9 clears nothing).
platform_nodes = Table(
    "platform_nodes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    # What the hosts list shows beside the agents the node holds (setting node_name).
    Column("name", String(255), nullable=True),
    # The id of the file store the node uses (store-id in its directory): nodes with different
    # ids do not see each other's files (docs/adr/0050).
    Column("file_store", String(36), nullable=True),
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

# One submission of an action to a selection of hosts; its jobs share the one progress view.
batches = Table(
    "batches",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("action", String(64), nullable=False),
    # The validated arguments as canonical JSON, whole (a script's full text included).
    Column("args", Text, nullable=False),
    # What was asked for: "hosts", "segment:NAME" or "all".
    Column("selection", String(128), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

# A submission that waits for a second person's approval (docs/adr/0039): one per batch, whose
# jobs in an approval segment wait as awaiting_approval until it is decided.
approvals = Table(
    "approvals",
    metadata,
    Column("batch_id", String(36), ForeignKey("batches.id"), primary_key=True),
    # The tier the action needs: an approver must hold at least this one.
    Column("tier", String(16), nullable=False),
    Column("requested_by", String(128), nullable=False),
    # Checked by user id, never by session: two sessions of one person are one person.
    Column("requested_user_id", Integer, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=False),
    # "pending", "approved", "rejected", "expired" or "withdrawn".
    Column("state", String(16), nullable=False, index=True),
    Column("decided_by", String(128), nullable=True),
    Column("decided_user_id", Integer, nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
)

# One action for one host (DESIGN.md section 3). The agent acknowledges every state after queued.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("batch_id", String(36), ForeignKey("batches.id"), nullable=False, index=True),
    Column("host_id", String(36), ForeignKey("hosts.id"), nullable=False),
    Column("action", String(64), nullable=False),
    Column("state", String(32), nullable=False),
    Column("created_by", String(128), nullable=False),
    # The submitting user's id: their queued jobs are withdrawn when their access ends.
    Column("user_id", Integer, nullable=True, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    # A queued job not delivered by then expires; `not_after` also stops a delivered one from
    # starting late on the endpoint.
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=True),
    Column("timeout_seconds", Float, nullable=False),
    # Set when the job was last sent: a cancel after that must go through the agent.
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("cancel_requested_by", String(128), nullable=True),
    Column("result", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("output_bytes", BigInteger, nullable=False, default=0),
    Column("output_count", Integer, nullable=False, default=0),
    # The live response session this job is a command of, if any (docs/adr/0012).
    Column("session_id", String(36), nullable=True, index=True),
    # The audit record of its outcome (docs/adr/0030): the stored state, result and output must
    # match it. NULL until the job ends (and for jobs that ended before outcomes were recorded).
    Column("outcome_seq", BigInteger, nullable=True),
    # Output the platform could not store (its disk or database was full), in bytes.
    Column("output_lost_bytes", BigInteger, nullable=False, default=0, server_default="0"),
    # How far its file transfer is (docs/adr/0054): bytes durable on the receiving side, of
    # the file's size, at a recent rate in bytes per second, as of `transfer_at`. Written about
    # once a second by the process moving the bytes, so every process's pages can show it.
    Column("transfer_bytes", BigInteger, nullable=True),
    Column("transfer_size", BigInteger, nullable=True),
    Column("transfer_rate", Float, nullable=True),
    Column("transfer_at", DateTime(timezone=True), nullable=True),
    # The dispatcher reads a host's unfinished jobs at every connect.
    Index("ix_jobs_host_state", "host_id", "state"),
    Index("ix_jobs_state_expires", "state", "expires_at"),
    # A host's isolation state is read from its isolation jobs (tether.server.services.isolation).
    Index("ix_jobs_action_host", "action", "host_id"),
)

# Streamed output and result rows of a job, in the order the platform stored them.
job_output = Table(
    "job_output",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    # The agent's numbering: a piece sent again after a reconnect is recognised and ignored.
    Column("seq", Integer, nullable=False),
    Column("stream", String(8), nullable=False),
    Column("text", Text, nullable=True),
    Column("fields", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("job_id", "seq", name="uq_job_output_job_seq"),
)

# The script library (docs/adr/0015). A deleted script keeps its row (deleted_at set) and its
# versions, so the name stays taken and the history stays readable in the database.
scripts = Table(
    "scripts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
)

# Versions are written once and never changed; the unique pair makes two concurrent saves of one
# script unable to claim the same number.
script_versions = Table(
    "script_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("script_id", Integer, ForeignKey("scripts.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("description", String(2000), nullable=False),
    # The parameter schema as canonical JSON text.
    Column("parameters", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("script_id", "version", name="uq_script_versions_script_version"),
)

# A live response session (`tether shell HOST`): who, on which host, from when to when and why it
# ended. Each command is a job carrying the session's id (docs/adr/0012).
live_sessions = Table(
    "live_sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("host_id", String(36), ForeignKey("hosts.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The user as the audit log names them, kept for when the account is gone.
    Column("actor", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_activity_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("end_reason", Text, nullable=True),
    # The working directory the client last reported (the shell keeps it; the UI may share it).
    Column("cwd", Text, nullable=True),
    # Ending a user's sessions and the idle sweep both look for open sessions.
    Index("ix_live_sessions_user_ended", "user_id", "ended_at"),
    Index("ix_live_sessions_ended_activity", "ended_at", "last_activity_at"),
)

# The file library: tools and remediation files analysts uploaded, and files retrieved from
# endpoints with their chain of custody. The bytes live in the blob store, named by SHA-256.
library_files = Table(
    "library_files",
    metadata,
    Column("id", String(36), primary_key=True),
    # "upload" (analyst to library) or "retrieved" (endpoint to platform).
    Column("kind", String(16), nullable=False),
    Column("name", String(255), nullable=False, index=True),
    Column("sha256", String(64), nullable=False, index=True),
    Column("size", BigInteger, nullable=False),
    # Chain of custody of a retrieved file: where it came from, as the endpoint described it.
    Column("host_id", String(36), ForeignKey("hosts.id"), nullable=True),
    Column("source_path", Text, nullable=True),
    Column("file_mtime", DateTime(timezone=True), nullable=True),
    Column("file_owner", String(128), nullable=True),
    Column("file_mode", String(16), nullable=True),
    # The job that retrieved it; a script may retrieve several files in one job.
    Column("job_id", String(36), ForeignKey("jobs.id"), nullable=True, index=True),
    # The transfer that brought it: recording a retrieval twice keeps one entry.
    Column("transfer_id", String(36), nullable=True, unique=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    # The audit record that added it; its metadata must match that record (docs/adr/0030).
    Column("record_seq", BigInteger, nullable=True),
)

# A signed agent upgrade rolled out to hosts at most `max_parallel` at a time (docs/adr/0051).
agent_upgrades = Table(
    "agent_upgrades",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("version", String(64), nullable=False),
    # The bundle archive, a file of the library, by content.
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    # Ed25519 over tether.protocol.upgrade.signed_statement, hex.
    Column("signature", String(128), nullable=False),
    Column("max_parallel", Integer, nullable=False),
    Column("selection", String(128), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

# Each host of a rollout, in the order it is upgraded; its job once sent, its outcome once ended.
agent_upgrade_hosts = Table(
    "agent_upgrade_hosts",
    metadata,
    Column("upgrade_id", String(36), ForeignKey("agent_upgrades.id"), primary_key=True),
    Column("host_id", String(36), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("job_id", String(36), nullable=True, index=True),
    # "upgraded", "rolled back", "refused", "failed" or "not sent"; None while waiting or running.
    Column("outcome", String(16), nullable=True),
    Column("error", Text, nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
)
