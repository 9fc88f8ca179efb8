"""`tether server init`: a new data directory with CA, server certificate, database and admin.

The first admin also holds the Active Response role (someone must be able to read the audit log
and, later, grant the role to others), so it must use a second factor from its first login: init
enrolls one and hands the secret back, to be shown or written next to the password.
"""

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from tether.protocol import Role
from tether.server.auth.passwords import generate_password
from tether.server.auth.totp import new_secret, provisioning_uri, to_base32
from tether.server.config import CONFIG_FILE, Settings, save_settings
from tether.server.errors import ConfigurationError
from tether.server.services.agent_addresses import write_addresses
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.checkpoint_sinks.syslog import collector_context, parse_syslog_target
from tether.server.services.mfa import load_sealer
from tether.server.services.pki import CertificateAuthority, save_keypair
from tether.server.services.platform import session_policy
from tether.server.services.segments import DEFAULT_SEGMENT, ensure_segment
from tether.server.services.users import Users
from tether.server.store.db import create_engine
from tether.server.store.migrate import upgrade

ADMIN_USERNAME = "admin"


@dataclass(frozen=True)
class InitResult:
    admin_username: str
    admin_password: str
    ca_sha256: str
    # The admin's TOTP secret (base32), its otpauth:// URI, and one-time recovery codes.
    mfa_secret: str
    mfa_uri: str
    recovery_codes: list[str]


def check_witness_options(settings: Settings) -> None:
    """Refuse, in one sentence and before anything is created, checkpoint sinks that cannot
    work: a collector address that is not one, a CA file that is missing, a file whose folder
    does not exist."""
    if settings.checkpoint_syslog_ca and not settings.checkpoint_syslog.startswith("tls://"):
        raise ConfigurationError("--checkpoint-syslog-ca needs a tls:// --checkpoint-syslog.")
    if settings.checkpoint_syslog:
        parse_syslog_target(settings.checkpoint_syslog)
    if settings.checkpoint_syslog_ca:
        collector_context(Path(settings.checkpoint_syslog_ca))
    if settings.checkpoint_file and not Path(settings.checkpoint_file).parent.is_dir():
        raise ConfigurationError(
            f"The folder of {settings.checkpoint_file} does not exist; create it first."
        )


def initialise(
    settings: Settings, ips: list[str], agent_addresses: list[str] | None = None
) -> InitResult:
    """Create everything a platform needs in `settings.data_dir`; refuses an existing one."""
    data = settings.data_dir
    if (data / CONFIG_FILE).exists():
        raise ConfigurationError(f"{data} already holds a Tether platform; nothing was changed.")
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    ca = CertificateAuthority.create(settings.hostname)
    # Local clients (the quickstart agent, the CLI on the same machine) always reach loopback.
    addresses = list(dict.fromkeys([*ips, "127.0.0.1", "::1"]))
    cert, key = ca.issue_server(settings.hostname, addresses)
    ca.save(settings.ca_cert, settings.ca_key)
    save_keypair(cert, key, settings.server_cert, settings.server_key)
    CheckpointSigner.create_key(settings.audit_key)
    load_sealer(settings.mfa_key)  # creates the key file
    upgrade(settings.db_url)
    password = generate_password()
    secret = new_secret()
    codes = asyncio.run(_seed(settings, password, secret, ca.sha256, agent_addresses or []))
    # Written last: its presence marks a complete data directory.
    save_settings(
        settings,
        [
            *("hostname", "listen", "agent_listen", "public_url", "agent_public_url"),
            *("database_url", "checkpoint_syslog", "checkpoint_syslog_ca", "checkpoint_file"),
            *("trusted_proxies", "redis_url", "node_name", "file_store_dir"),
        ],
    )
    return InitResult(
        ADMIN_USERNAME,
        password,
        ca.sha256,
        mfa_secret=to_base32(secret),
        mfa_uri=provisioning_uri(ADMIN_USERNAME, secret),
        recovery_codes=codes,
    )


async def _seed(
    settings: Settings, password: str, secret: bytes, ca_sha256: str, agent_addresses: list[str]
) -> list[str]:
    engine = create_engine(settings.db_url)
    try:
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        async with engine.begin() as conn:
            await ensure_segment(conn, DEFAULT_SEGMENT)
            # Where enrolled agents may dial (docs/adr/0049); none: the agent port's address.
            await write_addresses(conn, agent_addresses)
        users = Users(engine, audit, session_policy(settings), sealer=load_sealer(settings.mfa_key))
        admin = await users.create(ADMIN_USERNAME, password, {Role.ADMIN, Role.SCRIPT})
        codes = await users.mfa.enroll_directly(admin.id, secret)
        await audit.record(
            "platform.init",
            actor="system",
            target=settings.hostname,
            details={
                "admin": ADMIN_USERNAME,
                "roles": ["admin", "script"],
                "ca_sha256": ca_sha256,
                **({"agent_addresses": agent_addresses} if agent_addresses else {}),
            },
        )
        return codes
    finally:
        await engine.dispose()
