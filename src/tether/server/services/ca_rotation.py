"""`tether server rotate-key ca [--finish]`: a new platform CA, with agents moved to it over their
live connections (docs/adr/0048-postgresql-backup-faster-restore-ca-rotation.md).

Start (platform stopped): a new CA key and self-signed certificate, kept as `ca-next.pem` and
`ca-next.key`; the server certificate is reissued by the current CA (which every agent pins)
with the next CA's SHA-256 in an extension (`NEXT_CA_OID`). The gateway trusts client
certificates of both CAs from then on. The current CA was created with a path length of 0, so
it cannot vouch for an intermediate: a cross-certificate chain would be refused by every agent.

Rollover (platform running): an agent that sees the extension asks for a certificate under the
next CA (`ca.rekey`); the gateway signs it (`CaRollover.rekey`), keeps its serial as the host's
next certificate and answers with the certificate and the next CA, which the agent checks
against the extension and pins beside the current one. When the host connects with it, it
becomes the host's only certificate. Enrollment meanwhile goes on under the current CA; those
hosts move like the others.

Finish (platform stopped): refused, naming the hosts, while any host that is not revoked still
holds a certificate of another CA; otherwise the next CA becomes the CA (the old key is
destroyed), the server certificate is reissued by it, and the gateway trusts it alone. Agents
drop the old pin once they see the server certificate issued by the new CA.
"""

import asyncio
import getpass
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import or_, select

from tether.protocol.ca_rollover import NEXT_CA_OID, CaCertificate
from tether.server.config import Settings
from tether.server.errors import ConfigurationError, Invalid
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.audit_statements import ROTATE_KEY
from tether.server.services.hosts import Hosts
from tether.server.services.key_rotation import refuse_if_running
from tether.server.services.pki import (
    CertificateAuthority,
    cert_pem,
    fingerprint,
    save_keypair,
    serial_hex,
    server_names,
)
from tether.server.store.db import create_engine
from tether.server.store.tables import hosts

ACTOR = "platform host"
SOURCE = "tether server rotate-key ca"
NEXT_CERT = "ca-next.pem"
NEXT_KEY = "ca-next.key"
# Hosts named in the refusal to finish, at most.
_HOSTS_SHOWN = 20


@dataclass(frozen=True)
class CaRotation:
    record_seq: int
    old_sha256: str
    new_sha256: str
    hosts_to_move: int


def in_progress(data: Path) -> bool:
    """True between `rotate-key ca` and `rotate-key ca --finish`."""
    return (data / NEXT_CERT).is_file()


def trusted_ca_files(settings: Settings) -> list[Path]:
    """The CA certificates the gateway accepts client certificates from: the CA, and the next
    one while a rotation is under way."""
    following = settings.data_dir / NEXT_CERT
    return [settings.ca_cert, *([following] if following.is_file() else [])]


def next_ca_extension(data: Path) -> x509.UnrecognizedExtension | None:
    """The extension naming the next CA that the server certificate carries during a
    rotation; None otherwise."""
    if not in_progress(data):
        return None
    following = x509.load_pem_x509_certificate((data / NEXT_CERT).read_bytes())
    return x509.UnrecognizedExtension(
        x509.ObjectIdentifier(NEXT_CA_OID), fingerprint(following).encode()
    )


def _next_name(old: x509.Certificate) -> x509.Name:
    """The next CA's subject: the old one's with the time of the rotation, so the two are never
    confused (agents and chains tell CAs apart by name)."""
    common = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(common[0].value).split(" (")[0] if common else "Tether CA"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{base} ({stamp})"),
        ]
    )


def _reissue_server(settings: Settings, ca: CertificateAuthority) -> str:
    hostname, addresses = server_names(_first_certificate(settings.server_cert))
    cert, key = ca.issue_server(hostname, addresses, extra=next_ca_extension(settings.data_dir))
    save_keypair(cert, key, settings.server_cert, settings.server_key)
    return serial_hex(cert)


def rotate_ca(settings: Settings) -> CaRotation:
    """Start a CA rotation (the platform must be stopped)."""
    refuse_if_running(settings)
    data = settings.data_dir
    if in_progress(data):
        raise ConfigurationError(
            "A CA rotation is already under way; end it with 'tether server rotate-key ca "
            "--finish' before starting another."
        )
    current = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
    following = CertificateAuthority.create_named(
        _next_name(current.cert), ec.generate_private_key(ec.SECP256R1())
    )
    waiting = asyncio.run(_hosts_on_other_cas(settings, following.sha256))
    details: dict[str, Any] = {
        "key": "ca",
        "phase": "started",
        "old_ca_sha256": current.sha256,
        "new_ca_sha256": following.sha256,
        "hosts_to_move": len(waiting),
        "os_user": getpass.getuser(),
    }
    # On the record first: a rotation the chain cannot hold does not happen.
    seq = asyncio.run(_record(settings, details))
    following.save(data / NEXT_CERT, data / NEXT_KEY)
    _reissue_server(settings, current)
    return CaRotation(seq, current.sha256, following.sha256, len(waiting))


def finish_ca_rotation(settings: Settings) -> CaRotation:
    """End a CA rotation once every host that is not revoked holds a certificate of the next
    CA (the platform must be stopped)."""
    refuse_if_running(settings)
    data = settings.data_dir
    if not in_progress(data):
        raise ConfigurationError("No CA rotation is under way; start one with 'rotate-key ca'.")
    current = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
    following = CertificateAuthority.load(data / NEXT_CERT, data / NEXT_KEY)
    waiting = asyncio.run(_hosts_on_other_cas(settings, following.sha256))
    if waiting:
        shown = ", ".join(waiting[:_HOSTS_SHOWN])
        more = f" and {len(waiting) - _HOSTS_SHOWN} more" if len(waiting) > _HOSTS_SHOWN else ""
        raise ConfigurationError(
            f"{len(waiting)} host(s) still hold a certificate of the old CA: {shown}{more}; "
            "let them connect (they move by themselves) or revoke them, then finish again."
        )
    details: dict[str, Any] = {
        "key": "ca",
        "phase": "finished",
        "old_ca_sha256": current.sha256,
        "new_ca_sha256": following.sha256,
        "os_user": getpass.getuser(),
    }
    seq = asyncio.run(_record(settings, details))
    following.save(settings.ca_cert, settings.ca_key)  # the old key is overwritten
    (data / NEXT_KEY).unlink()
    (data / NEXT_CERT).unlink()
    _reissue_server(settings, following)
    return CaRotation(seq, current.sha256, following.sha256, 0)


def _first_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


async def _hosts_on_other_cas(settings: Settings, ca_sha256: str) -> list[str]:
    """`hostname (id)` of every host not revoked whose certificate another CA issued."""
    engine = create_engine(settings.db_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(hosts.c.id, hosts.c.hostname)
                .where(
                    hosts.c.revoked_at.is_(None),
                    or_(hosts.c.cert_ca.is_(None), hosts.c.cert_ca != ca_sha256),
                )
                .order_by(hosts.c.hostname)
            )
            return [f"{row.hostname} ({row.id})" for row in rows]
    finally:
        await engine.dispose()


async def _record(settings: Settings, details: dict[str, Any]) -> int:
    engine = create_engine(settings.db_url)
    try:
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        record = await audit.record(
            ROTATE_KEY, actor=ACTOR, source=SOURCE, target="ca", details=details
        )
        return record.seq
    finally:
        await engine.dispose()


class CaRollover:
    """The gateway's half of a rotation: certificates under the next CA for agents that ask."""

    def __init__(self, settings: Settings, hosts_: Hosts) -> None:
        data = settings.data_dir
        self._next = (
            CertificateAuthority.load(data / NEXT_CERT, data / NEXT_KEY)
            if in_progress(data)
            else None
        )
        self._hosts = hosts_

    async def rekey(self, host_id: str, csr_pem: str, presented: bytes) -> CaCertificate:
        """Sign the host's CSR with the next CA and keep its serial as the host's next
        certificate; Invalid (one sentence) when no rotation is under way, the host already
        connected with a certificate of the next CA (`presented`), or the CSR is bad."""
        ca = self._next
        if ca is None:
            raise Invalid("No CA rotation is under way; this agent's certificate stays.")
        if x509.load_der_x509_certificate(presented).issuer == ca.cert.subject:
            raise Invalid("This agent's certificate is already one of the new CA.")
        cert = ca.sign_agent_csr(csr_pem, host_id)
        await self._hosts.give_next_certificate(
            host_id, serial_hex(cert), fingerprint(cert), ca.sha256
        )
        return CaCertificate(certificate=cert_pem(cert), ca=ca.pem.decode())

    async def adopted(self, host_id: str, der: bytes) -> None:
        """The host connected with its next certificate: make it the host's only one."""
        if self._next is None:
            return
        cert = x509.load_der_x509_certificate(der)
        await self._hosts.adopt_next_certificate(
            host_id, serial_hex(cert), hashlib.sha256(der).hexdigest(), self._next.sha256
        )
