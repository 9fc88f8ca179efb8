"""One typed settings object for the platform, validated at start and passed down.

Sources, strongest first: command-line options, `TETHER_*` environment variables, then
`config.json` in the data directory (written by `tether server init`).
"""

import ipaddress
import json
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tether.server.errors import ConfigurationError
from tether.server.store.db import sqlite_url


class Role(StrEnum):
    """What one platform process serves (docs/adr/0044)."""

    # The analyst port, the web UI and the agent port in one process (the embedded default).
    ALL = "all"
    # The analyst port and the web UI only; agents are reached through the bus.
    API = "api"
    # The agent port only, with the job sweeper and the agents' transfers.
    GATEWAY = "gateway"

    @property
    def holds_agents(self) -> bool:
        return self is not Role.API

    @property
    def serves_analysts(self) -> bool:
        return self is not Role.GATEWAY


class Settings(BaseSettings):
    """Everything the platform process needs to know; nothing else is read at import time."""

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="forbid")

    data_dir: Path
    database_url: str = ""
    hostname: str = "localhost"
    listen: str = "127.0.0.1:8443"
    agent_listen: str = "127.0.0.1:8444"
    # Addresses printed into enrollment tokens; default to the listen addresses.
    public_url: str = ""
    agent_public_url: str = ""
    heartbeat_seconds: int = Field(default=60, ge=5, le=3600)
    hello_timeout_seconds: float = Field(default=10.0, gt=0)
    # Agent connections in their TLS handshake or WebSocket upgrade at once; more are shed (closed
    # before the handshake) and the agents retry soon (docs/adr/0049). 0: no limit.
    agent_handshake_limit: int = Field(default=500, ge=0, le=100_000)
    last_seen_flush_seconds: float = Field(default=5.0, gt=0)
    # How often queued jobs are checked for expiry and for hosts another process woke.
    job_sweep_seconds: float = Field(default=5.0, gt=0)
    # The largest file retrieved from an endpoint or uploaded to the library (4 GiB default).
    max_file_bytes: int = Field(default=4 * 1024**3, ge=1024)
    session_idle_minutes: int = Field(default=30, ge=1)
    session_lifetime_hours: int = Field(default=12, ge=1)
    # How long a process trusts what it read of a session (docs/adr/0053): every change to an
    # account, its roles or sessions is forgotten at once; this bounds a missed one. 0: off.
    session_cache_seconds: float = Field(default=2.0, ge=0, le=30)
    # The most audit records one group commit writes (docs/adr/0053); 1 writes each record in a
    # transaction of its own, as before group commit (the benchmarks' same-run baseline).
    audit_group_records: int = Field(default=500, ge=1, le=5000)
    # A live response session (`tether shell`) with no command for this long is ended.
    live_session_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    live_session_sweep_seconds: float = Field(default=30.0, gt=0)
    log_level: str = "info"
    # Split platform (docs/adr/0044): which ports this process serves, and the Redis bus that
    # carries wake-ups between the processes (required unless the role is "all"); the key and
    # channel prefix keeps two platforms on one Redis apart.
    role: Role = Role.ALL
    redis_url: str = ""
    bus_prefix: str = Field(default="tether:", min_length=1, max_length=64)
    # Several nodes (docs/adr/0050): the name the hosts list shows beside the agents this node
    # holds (default: this machine's name and agent port), and the file store's directory, which
    # several nodes on different machines must share (an NFS mount; default: the data
    # directory's files/).
    node_name: str = Field(default="", max_length=255)
    file_store_dir: str = ""
    # Witnesses off the host (docs/adr/0032-audit-witnesses.md): every signed audit checkpoint
    # also goes to a syslog collector (tcp://HOST:PORT or tls://HOST:PORT, RFC 5424) and/or is
    # appended to a file as a JSON line; the CA file names who may serve tls:// (else the
    # system's trust store).
    checkpoint_syslog: str = ""
    checkpoint_syslog_ca: str = ""
    checkpoint_file: str = ""
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the client; none by
    # default, so the source in the audit log is the TCP peer unless an operator says otherwise.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @property
    def several_nodes(self) -> bool:
        """True when this process is one of several sharing the database and the Redis bus: a
        split role, or `all` with a bus (docs/adr/0050)."""
        return self.role is not Role.ALL or bool(self.redis_url)

    @property
    def node_label(self) -> str:
        if self.node_name:
            return self.node_name
        port = split_hostport(self.agent_listen if self.role.holds_agents else self.listen)[1]
        return f"{socket.gethostname()}:{port}"

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(str(self.data_dir / "tether.db"))

    @property
    def analyst_url(self) -> str:
        return self.public_url or f"https://{_public_host(self.listen, self.hostname)}"

    @property
    def agent_url(self) -> str:
        return self.agent_public_url or f"wss://{_public_host(self.agent_listen, self.hostname)}"

    # Files inside the data directory.
    @property
    def ca_cert(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.data_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.data_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.data_dir / "server.key"

    @property
    def audit_key(self) -> Path:
        return self.data_dir / "audit-signing.key"

    @property
    def upgrade_key(self) -> Path:
        """The Ed25519 key that signs agent upgrades (docs/adr/0051); made at first use."""
        return self.data_dir / "upgrade-signing.key"

    @property
    def audit_anchor(self) -> Path:
        return self.data_dir / "audit-anchor.json"

    @property
    def file_store(self) -> Path:
        """Retrieved and uploaded files, content-addressed (tether.server.store.blobs)."""
        return Path(self.file_store_dir) if self.file_store_dir else self.data_dir / "files"

    @property
    def mfa_key(self) -> Path:
        """AES-GCM key that seals TOTP secrets in the database."""
        return self.data_dir / "mfa-sealing.key"


def split_hostport(value: str) -> tuple[str, int]:
    """Parse HOST:PORT (or [v6]:PORT) with a clear error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{value!r} is not HOST:PORT.")
    return host.strip("[]") or "0.0.0.0", int(port)


def _public_host(listen: str, hostname: str) -> str:
    host, port = split_hostport(listen)
    shown = hostname if host in {"0.0.0.0", "::", ""} else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{shown}:{port}"


CONFIG_FILE = "config.json"


def load_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for the platform whose data lives in `data_dir`."""
    path = data_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigurationError(
            f"{data_dir} is not a Tether data directory; run 'tether server init' first."
        )
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}.") from exc
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        # Environment variables beat the file, options beat both: pydantic-settings gives init
        # arguments priority, so the file's values go in only where no variable is set.
        env_settings = Settings(data_dir=data_dir, **given)
        merged = {**stored, **env_settings.model_dump(exclude_unset=True), **given}
        merged["data_dir"] = data_dir
        return Settings(**merged)
    except ValidationError as exc:
        raise settings_error(exc) from exc


def settings_error(exc: ValidationError) -> ConfigurationError:
    """The first problem of invalid settings, as one sentence."""
    err = exc.errors()[0]
    # Our own validators' messages are sentences already; pydantic prefixes them.
    message = str(err["msg"]).removeprefix("Value error, ")
    return ConfigurationError(f"Setting {err['loc'][0]}: {message}.")


def save_settings(settings: Settings, keys: list[str]) -> None:
    """Persist the chosen settings in the data directory's config file."""
    data = settings.model_dump(mode="json", include=set(keys))
    (settings.data_dir / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")
