"""The server certificate's life: renewal from the platform CA, and a warning before it ends.

`tether server renew-cert` issues a new certificate for the same host name and addresses, from
the same CA (agents pin the CA, so they accept it at once) and audits it; the running platform
serves it after a restart. The platform watches the certificate it serves: /metrics shows the
seconds left, and the log warns every day from 30 days before the end.
"""

import asyncio
import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from tether.server.config import Settings
from tether.server.errors import ConfigurationError
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.ca_rotation import next_ca_extension
from tether.server.services.pki import CertificateAuthority, save_keypair, serial_hex, server_names
from tether.server.store.db import create_engine, utcnow

log = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(days=30)
RENEW_HINT = "run 'tether server renew-cert --data DIR' and restart the platform"


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot read the server certificate {path}: {exc}.") from exc


class CertificateWatch:
    """How long the certificate being served has left."""

    def __init__(self, cert: x509.Certificate, clock: Callable[[], datetime] = utcnow) -> None:
        self.not_after = cert.not_valid_after_utc
        self._clock = clock

    def seconds_left(self) -> float:
        return (self.not_after - self._clock()).total_seconds()

    def warn_if_ending(self) -> bool:
        """Log a warning when less than 30 days are left; returns whether it did."""
        left = self.not_after - self._clock()
        if left >= EXPIRY_WARNING:
            return False
        when = f"{self.not_after:%Y-%m-%d %H:%M} UTC"
        if left <= timedelta(0):
            log.warning("The server certificate expired on %s; %s.", when, RENEW_HINT)
        else:
            log.warning(
                "The server certificate expires on %s, in %d days; %s.", when, left.days, RENEW_HINT
            )
        return True

    async def run(self, interval_seconds: float) -> None:
        """Warn now and every `interval_seconds` while the certificate is near its end."""
        while True:
            self.warn_if_ending()
            await asyncio.sleep(interval_seconds)


@dataclass(frozen=True)
class Renewal:
    serial: str
    previous_serial: str
    not_after: datetime


def renew(settings: Settings) -> Renewal:
    """Issue a new server certificate for the current one's names from the platform CA, audit it
    and save it in place of the old one.

    Audited first: a renewal the chain cannot record does not happen."""
    current = load_certificate(settings.server_cert)
    hostname, addresses = server_names(current)
    ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
    # During a CA rotation the server certificate goes on naming the next CA.
    cert, key = ca.issue_server(hostname, addresses, extra=next_ca_extension(settings.data_dir))
    renewal = Renewal(serial_hex(cert), serial_hex(current), cert.not_valid_after_utc)
    asyncio.run(_audit(settings, hostname, renewal))
    save_keypair(cert, key, settings.server_cert, settings.server_key)
    return renewal


async def _audit(settings: Settings, hostname: str, renewal: Renewal) -> None:
    engine = create_engine(settings.db_url)
    try:
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        await audit.record(
            "platform.renew_cert",
            actor="system",
            target=hostname,
            details={
                "serial": renewal.serial,
                "previous_serial": renewal.previous_serial,
                "not_after": renewal.not_after.isoformat(),
                # Who ran the command on the platform host: the only identity it has.
                "os_user": getpass.getuser(),
            },
        )
    finally:
        await engine.dispose()
