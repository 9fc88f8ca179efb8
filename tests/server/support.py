"""Helpers for the platform tests: a controllable clock, CSRs, rows inserted directly."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import PROTOCOL_VERSION, CloseCode, Policy
from tether.server.auth.totp import from_base32, time_step, totp
from tether.server.services.segments import ensure_segment
from tether.server.store.db import utcnow
from tether.server.store.tables import hosts


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class TickingClock(FakeClock):
    """A clock that moves one second forward each time it is read (distinct timestamps)."""

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def make_csr(
    hostname: str = "endpoint-1",
    key: ec.EllipticCurvePrivateKey | None = None,
    extra_names: list[x509.NameAttribute[str]] | None = None,
) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A PEM CSR and its P-256 key, as an endpoint would make it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname), *(extra_names or [])])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


async def add_host(
    engine: AsyncEngine, hostname: str, *, segment: str = "default", host_id: str | None = None
) -> str:
    """Insert an enrolled host row directly; returns its id."""
    host_id = host_id or str(uuid.uuid4())
    async with engine.begin() as conn:
        segment_id, _ = await ensure_segment(conn, segment)
        await conn.execute(
            insert(hosts).values(
                id=host_id,
                hostname=hostname,
                os_family="linux",
                os_name="Linux",
                os_version="6.1",
                addresses="[]",
                segment_id=segment_id,
                cert_serial=uuid.uuid4().hex,
                cert_sha256="0" * 64,
                agent_version="0.1.0",
                enrolled_at=datetime.now(UTC) - timedelta(days=1),
            )
        )
    return host_id


class FakeLink:
    """An agent connection that records how it was closed."""

    def __init__(self, host_id: str, protocol_version: int = PROTOCOL_VERSION) -> None:
        self.host_id = host_id
        self.connected_at = utcnow()
        self.protocol_version = protocol_version
        self.closed: list[tuple[CloseCode, str]] = []
        self.aborted = False
        self.policies: list[Policy] = []
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def call(self, action: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {}

    async def send_policy(self, policy: Policy) -> None:
        self.policies.append(policy)

    async def disconnect(self, code: CloseCode, reason: str) -> None:
        self.closed.append((code, reason))

    def abort(self) -> None:
        self.aborted = True


def code_after(secret: str, last_step: int | None, now: datetime | None = None) -> tuple[str, int]:
    """A TOTP code (and its step) the platform has not accepted yet: the current step, or the
    next one (within the allowed drift) when the current one was used already."""
    current = time_step((now or datetime.now(UTC)).timestamp())
    step = current if last_step is None or last_step < current else last_step + 1
    if step > current + 1:
        raise AssertionError("three logins in one 30-second step: no unused code is valid yet")
    return totp(from_base32(secret), step * 30), step
