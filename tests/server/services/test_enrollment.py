"""Enrollment tokens and the enrollment of endpoints from their CSRs."""

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import EnrollmentToken, EnrollRequest
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment import TOKEN_REFUSED, Enrollment, IssuedToken
from tether.server.services.pki import CertificateAuthority, fingerprint, serial_hex
from tether.server.services.segments import ensure_segment
from tether.server.store.tables import enrollment_tokens, hosts, segments

from ..support import make_csr

SERVER = "https://tether.example:8443"
AGENT = "wss://tether.example:8444"


@pytest.fixture
async def enrollment(engine: AsyncEngine, audit: AuditLog, ca: CertificateAuthority) -> Enrollment:
    # The segment `server init` makes: tokens are only issued for segments that exist.
    async with engine.begin() as conn:
        await ensure_segment(conn, "default")
    return Enrollment(engine, audit, ca, SERVER, AGENT)


async def issue(enrollment: Enrollment, uses: int = 1, segment: str = "default") -> IssuedToken:
    return await enrollment.create_token(
        segment=segment, uses=uses, lifetime=timedelta(hours=1), actor="admin", source="test"
    )


def request_for(
    issued: IssuedToken, hostname: str = "ws-1", csr: str | None = None
) -> EnrollRequest:
    secret = EnrollmentToken.decode(issued.token).secret
    return EnrollRequest(secret=secret, csr_pem=csr or make_csr(hostname)[0], hostname=hostname)


async def uses_of(engine: AsyncEngine, token_id: int) -> int:
    async with engine.connect() as conn:
        query = select(enrollment_tokens.c.uses).where(enrollment_tokens.c.id == token_id)
        return int((await conn.execute(query)).scalar_one())


async def host_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(hosts.c.id))).all())


async def add_segment(engine: AsyncEngine, name: str) -> None:
    async with engine.begin() as conn:
        await ensure_segment(conn, name)


async def test_token_carries_everything_an_endpoint_needs(
    enrollment: Enrollment, ca: CertificateAuthority, audit: AuditLog, engine: AsyncEngine
) -> None:
    await add_segment(engine, "servers")
    issued = await issue(enrollment, uses=3, segment="servers")
    token = EnrollmentToken.decode(issued.token)
    assert (token.server_url, token.agent_url, token.ca_sha256) == (SERVER, AGENT, ca.sha256)
    assert (issued.segment, issued.max_uses) == ("servers", 3)
    actions = [(r.action, r.target) async for r in audit.iter_records()]
    assert actions == [("enrollment_token.create", "token:1")]
    (info,) = await enrollment.list_tokens()
    assert (info.segment, info.max_uses, info.uses, info.created_by) == ("servers", 3, 0, "admin")


async def test_token_secret_is_stored_hashed(enrollment: Enrollment, engine: AsyncEngine) -> None:
    issued = await issue(enrollment)
    secret = EnrollmentToken.decode(issued.token).secret
    async with engine.connect() as conn:
        stored = (await conn.execute(select(enrollment_tokens.c.secret_hash))).scalar_one()
    assert secret not in stored
    assert len(stored) == 64


@pytest.mark.parametrize(
    ("uses", "lifetime", "message"),
    [
        (0, timedelta(hours=1), "Uses must be between"),
        (100_001, timedelta(hours=1), "Uses must be between"),
        (1, timedelta(seconds=59), "between one minute and one year"),
        (1, timedelta(days=366), "between one minute and one year"),
    ],
)
async def test_token_limits(
    enrollment: Enrollment, uses: int, lifetime: timedelta, message: str
) -> None:
    with pytest.raises(Invalid, match=message):
        await enrollment.create_token(
            segment="default", uses=uses, lifetime=lifetime, actor="a", source="s"
        )


async def test_bad_segment_name_is_refused(enrollment: Enrollment) -> None:
    with pytest.raises(Invalid, match="segment name"):
        await issue(enrollment, segment="bad/segment")


async def test_a_token_for_a_segment_that_does_not_exist_is_refused(
    enrollment: Enrollment, audit: AuditLog, engine: AsyncEngine
) -> None:
    with pytest.raises(NotFound) as refused:
        await issue(enrollment, segment="servres")
    assert str(refused.value) == (
        "No segment is named 'servres'; create it first ('tether segment create servres')."
    )
    assert await enrollment.list_tokens() == []
    assert [r.action async for r in audit.iter_records()] == []  # and no segment was made
    async with engine.connect() as conn:
        assert (await conn.execute(select(segments.c.name))).scalars().all() == ["default"]


# Revocation (issue 18, item 5).


async def test_a_revoked_token_enrolls_nothing_more_and_its_hosts_stay(
    enrollment: Enrollment, audit: AuditLog, engine: AsyncEngine
) -> None:
    issued = await issue(enrollment, uses=2)
    await enrollment.enroll(request_for(issued, "ws-1"), source="10.0.0.1")

    revoked = await enrollment.revoke_token(str(issued.id), actor="admin", source="s")

    assert revoked.revoked_by == "admin"
    assert revoked.revoked_at is not None
    with pytest.raises(Forbidden, match="revoked"):
        await enrollment.enroll(request_for(issued, "ws-2"), source="10.0.0.2")
    assert await host_count(engine) == 1
    records = [r async for r in audit.iter_records()]
    (record,) = [r for r in records if r.action == "enrollment_token.revoke"]
    assert (record.actor, record.target) == ("admin", f"token:{issued.id}")
    assert json.loads(record.details) == {"segment": "default", "uses": 1, "max_uses": 2}


async def test_a_token_is_revoked_by_its_own_text(enrollment: Enrollment) -> None:
    issued = await issue(enrollment)
    other = await issue(enrollment)
    revoked = await enrollment.revoke_token(issued.token, actor="admin", source="s")
    assert revoked.id == issued.id
    listed = {t.id: t.revoked_at is not None for t in await enrollment.list_tokens()}
    assert listed == {issued.id: True, other.id: False}


@pytest.mark.parametrize(
    ("ref", "error", "sentence"),
    [
        ("99", NotFound, "No enrollment token has that number or text."),
        ("not-a-token", Invalid, "Name an enrollment token by its number"),
        ("", Invalid, "Name an enrollment token by its number"),
    ],
)
async def test_revoking_what_is_no_token_is_one_sentence(
    enrollment: Enrollment, audit: AuditLog, ref: str, error: type[Exception], sentence: str
) -> None:
    with pytest.raises(error, match=re.escape(sentence)):
        await enrollment.revoke_token(ref, actor="admin", source="s")
    assert [r async for r in audit.iter_records()] == []


async def test_revoking_twice_is_refused(enrollment: Enrollment) -> None:
    issued = await issue(enrollment)
    await enrollment.revoke_token(str(issued.id), actor="admin", source="s")
    with pytest.raises(Conflict, match=f"Enrollment token {issued.id} is already revoked."):
        await enrollment.revoke_token(str(issued.id), actor="admin", source="s")


async def test_enrollment_creates_the_host_in_the_token_segment(
    enrollment: Enrollment, engine: AsyncEngine, audit: AuditLog, ca: CertificateAuthority
) -> None:
    await add_segment(engine, "finance")
    issued = await issue(enrollment, segment="finance")
    csr, key = make_csr("ws-1")
    answer = await enrollment.enroll(request_for(issued, csr=csr), source="10.1.1.1")
    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == answer.host_id
    assert cert.public_key() == key.public_key()
    assert answer.ca_pem == ca.pem.decode()
    assert answer.agent_url == AGENT
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(hosts, segments.c.name.label("segment")).join(
                    segments, segments.c.id == hosts.c.segment_id
                )
            )
        ).one()
    assert (row.id, row.hostname, row.segment) == (answer.host_id, "ws-1", "finance")
    assert (row.cert_serial, row.cert_sha256) == (serial_hex(cert), fingerprint(cert))
    assert row.enrollment_token_id == issued.id
    assert row.revoked_at is None
    assert await uses_of(engine, issued.id) == 1
    last = [r async for r in audit.iter_records()][-1]
    assert (last.action, last.outcome, last.target) == (
        "agent.enroll",
        "success",
        f"host:{answer.host_id}",
    )
    assert last.to_json()["details"]["cert_serial"] == serial_hex(cert)


async def test_used_up_token_is_refused_and_audited(
    enrollment: Enrollment, engine: AsyncEngine, audit: AuditLog
) -> None:
    issued = await issue(enrollment, uses=2)
    await enrollment.enroll(request_for(issued, "a"), source="s")
    await enrollment.enroll(request_for(issued, "b"), source="s")
    with pytest.raises(Forbidden) as caught:
        await enrollment.enroll(request_for(issued, "c"), source="10.9.9.9")
    assert str(caught.value) == TOKEN_REFUSED
    assert await uses_of(engine, issued.id) == 2
    assert await host_count(engine) == 2
    last = [r async for r in audit.iter_records()][-1]
    assert (last.action, last.outcome, last.actor, last.source) == (
        "agent.enroll",
        "failure",
        "endpoint:c",
        "10.9.9.9",
    )
    assert last.to_json()["details"]["reason"] == TOKEN_REFUSED


async def test_expired_token_is_refused(
    enrollment: Enrollment, engine: AsyncEngine, audit: AuditLog
) -> None:
    issued = await issue(enrollment, uses=5)
    async with engine.begin() as conn:
        await conn.execute(
            update(enrollment_tokens).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(Forbidden, match="used up or expired"):
        await enrollment.enroll(request_for(issued), source="s")
    assert await uses_of(engine, issued.id) == 0
    assert await host_count(engine) == 0
    last = [r async for r in audit.iter_records()][-1]
    assert (last.action, last.outcome) == ("agent.enroll", "failure")


async def test_unknown_secret_is_refused(enrollment: Enrollment) -> None:
    request = EnrollRequest(secret="x" * 43, csr_pem=make_csr()[0], hostname="ws")
    with pytest.raises(Forbidden, match="unknown"):
        await enrollment.enroll(request, source="s")


async def test_racing_for_the_last_use_only_one_wins(
    enrollment: Enrollment, engine: AsyncEngine
) -> None:
    issued = await issue(enrollment, uses=1)
    results = await asyncio.gather(
        *(enrollment.enroll(request_for(issued, f"ws-{i}"), source="s") for i in range(6)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, Forbidden) for r in losers), losers
    assert await uses_of(engine, issued.id) == 1
    assert await host_count(engine) == 1


async def test_racing_for_several_uses_spends_each_once(
    enrollment: Enrollment, engine: AsyncEngine
) -> None:
    issued = await issue(enrollment, uses=3)
    results = await asyncio.gather(
        *(enrollment.enroll(request_for(issued, f"ws-{i}"), source="s") for i in range(8)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, Forbidden) for r in results if isinstance(r, BaseException))
    assert await uses_of(engine, issued.id) == 3
    assert await host_count(engine) == 3


def p384_csr() -> str:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ws")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("csr", "message"),
    [("garbage " * 30, "not a valid PEM CSR"), (p384_csr(), "P-256")],
    ids=["garbage", "p384"],
)
async def test_bad_csr_is_refused_and_the_use_is_not_spent(
    enrollment: Enrollment, engine: AsyncEngine, audit: AuditLog, csr: str, message: str
) -> None:
    issued = await issue(enrollment, uses=1)
    with pytest.raises(Invalid, match=message):
        await enrollment.enroll(request_for(issued, csr=csr), source="s")
    assert await uses_of(engine, issued.id) == 0
    assert await host_count(engine) == 0
    last = [r async for r in audit.iter_records()][-1]
    assert (last.action, last.outcome) == ("agent.enroll", "failure")
    assert message in last.to_json()["details"]["reason"]
    # The use is still there for a good request.
    await enrollment.enroll(request_for(issued), source="s")
    assert await uses_of(engine, issued.id) == 1
