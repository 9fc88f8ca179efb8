"""Enrollment tokens and the enrollment of a new endpoint from its CSR."""

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import (
    EnrollmentToken,
    EnrollRequest,
    EnrollResponse,
    InvalidEnrollmentToken,
)
from tether.server.auth.tokens import token_hash
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.agent_addresses import AgentAddresses
from tether.server.services.audit import AuditLog
from tether.server.services.pki import CertificateAuthority, cert_pem, fingerprint, serial_hex
from tether.server.services.segments import check_segment_name
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import enrollment_tokens, hosts, segments

MAX_TOKEN_USES = 100_000
MAX_TOKEN_LIFETIME = timedelta(days=365)
TOKEN_REFUSED = (
    "This enrollment token is unknown, used up or expired (or revoked); ask an admin for a new one."
)
TOKEN_REFERENCE = (
    "Name an enrollment token by its number ('tether enroll-token list') or the token itself."
)


@dataclass(frozen=True)
class IssuedToken:
    id: int
    token: str
    segment: str
    max_uses: int
    expires_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    id: int
    segment: str
    max_uses: int
    uses: int
    expires_at: datetime
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None


def _token_info(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        segment=row.segment,
        max_uses=row.max_uses,
        uses=row.uses,
        expires_at=as_utc(row.expires_at),  # type: ignore[arg-type]
        created_by=row.created_by,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
        revoked_at=as_utc(row.revoked_at),
        revoked_by=row.revoked_by,
    )


class Enrollment:
    """Issues tokens to admins and certificates to endpoints that present one."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        ca: CertificateAuthority,
        server_url: str,
        agent_url: str,
        addresses: AgentAddresses | None = None,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._ca = ca
        self._server_url = server_url
        self._agent_url = agent_url
        # Handed to agents that can read them (docs/adr/0049).
        self._addresses = addresses

    async def create_token(
        self, *, segment: str, uses: int, lifetime: timedelta, actor: str, source: str
    ) -> IssuedToken:
        if not 1 <= uses <= MAX_TOKEN_USES:
            raise Invalid(f"Uses must be between 1 and {MAX_TOKEN_USES}.")
        if not timedelta(minutes=1) <= lifetime <= MAX_TOKEN_LIFETIME:
            raise Invalid("An enrollment token must live between one minute and one year.")
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + lifetime
        async with self._audit.transaction() as tx:
            conn = tx.conn
            # An existing segment only: a typo must not make a new, empty one (issue 18).
            check_segment_name(segment)
            segment_id = (
                await conn.execute(select(segments.c.id).where(segments.c.name == segment))
            ).scalar()
            if segment_id is None:
                raise NotFound(
                    f"No segment is named {segment!r}; create it first "
                    f"('tether segment create {segment}')."
                )
            result = await conn.execute(
                insert(enrollment_tokens).values(
                    secret_hash=token_hash(secret),
                    segment_id=segment_id,
                    max_uses=uses,
                    uses=0,
                    expires_at=expires,
                    created_by=actor[:64],
                    created_at=now,
                )
            )
            token_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            await tx.record(
                "enrollment_token.create",
                actor=actor,
                target=f"token:{token_id}",
                source=source,
                details={"segment": segment, "uses": uses, "expires_at": expires.isoformat()},
            )
        token = EnrollmentToken(
            server_url=self._server_url,
            agent_url=self._agent_url,
            secret=secret,
            ca_sha256=self._ca.sha256,
        )
        return IssuedToken(token_id, token.encode(), segment, uses, expires)

    def _tokens(self) -> Any:
        return select(enrollment_tokens, segments.c.name.label("segment")).join(
            segments, segments.c.id == enrollment_tokens.c.segment_id
        )

    async def list_tokens(self) -> list[TokenInfo]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(self._tokens().order_by(enrollment_tokens.c.id))).all()
        return [_token_info(r) for r in rows]

    async def revoke_token(self, ref: str, *, actor: str, source: str) -> TokenInfo:
        """Stop a token enrolling anything more, named by its number or by the token itself
        (the text an admin found leaked); the hosts it enrolled stay enrolled."""
        ref = ref.strip()
        if ref.isdigit() and len(ref) <= 12:
            which = enrollment_tokens.c.id == int(ref)
        else:
            try:
                secret = EnrollmentToken.decode(ref).secret
            except InvalidEnrollmentToken as exc:
                raise Invalid(TOKEN_REFERENCE) from exc
            which = enrollment_tokens.c.secret_hash == token_hash(secret)
        async with self._audit.transaction() as tx:
            row = (await tx.conn.execute(self._tokens().where(which))).first()
            if row is None:
                raise NotFound("No enrollment token has that number or text.")
            if row.revoked_at is not None:
                raise Conflict(f"Enrollment token {row.id} is already revoked.")
            await tx.conn.execute(
                update(enrollment_tokens)
                .where(enrollment_tokens.c.id == row.id)
                .values(revoked_at=utcnow(), revoked_by=actor[:64])
            )
            await tx.record(
                "enrollment_token.revoke",
                actor=actor,
                target=f"token:{row.id}",
                source=source,
                details={"segment": row.segment, "uses": row.uses, "max_uses": row.max_uses},
            )
            row = (await tx.conn.execute(self._tokens().where(which))).one()
        return _token_info(row)

    async def enroll(self, request: EnrollRequest, *, source: str) -> EnrollResponse:
        """Spend one use of the token and sign the endpoint's CSR, or refuse (audited)."""
        now = utcnow()
        host_id = str(uuid.uuid4())
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(enrollment_tokens).where(
                            enrollment_tokens.c.secret_hash == token_hash(request.secret)
                        )
                    )
                ).first()
                expires = as_utc(row.expires_at) if row else None
                if row is None or expires is None or expires <= now or row.revoked_at is not None:
                    raise Forbidden(TOKEN_REFUSED)
                # The use is spent with a guarded update, so two endpoints racing for the last
                # use cannot both win.
                spent = await conn.execute(
                    update(enrollment_tokens)
                    .where(enrollment_tokens.c.id == row.id)
                    .where(enrollment_tokens.c.uses < enrollment_tokens.c.max_uses)
                    .values(uses=enrollment_tokens.c.uses + 1)
                )
                if spent.rowcount != 1:
                    raise Forbidden(TOKEN_REFUSED)
                cert = self._ca.sign_agent_csr(request.csr_pem, host_id)
                await conn.execute(
                    insert(hosts).values(
                        id=host_id,
                        hostname=request.hostname,
                        os_family="",
                        os_name="",
                        os_version="",
                        addresses="[]",
                        segment_id=row.segment_id,
                        cert_serial=serial_hex(cert),
                        cert_sha256=fingerprint(cert),
                        cert_ca=self._ca.sha256,
                        agent_version="",
                        enrolled_at=now,
                        enrollment_token_id=row.id,
                    )
                )
        except (Forbidden, Invalid) as exc:
            await self._audit.record(
                "agent.enroll",
                actor=f"endpoint:{request.hostname}",
                outcome="failure",
                source=source,
                details={"hostname": request.hostname, "reason": str(exc)},
            )
            raise
        await self._audit.record(
            "agent.enroll",
            actor=f"endpoint:{request.hostname}",
            target=f"host:{host_id}",
            source=source,
            details={
                "hostname": request.hostname,
                "token_id": row.id,
                "cert_serial": serial_hex(cert),
                "cert_sha256": fingerprint(cert),
            },
        )
        listed = (
            await self._addresses.listed_urls()
            if self._addresses is not None and request.reads_agent_addresses
            else ()
        )
        return EnrollResponse(
            host_id=host_id,
            certificate_pem=cert_pem(cert),
            ca_pem=self._ca.pem.decode(),
            agent_url=self._agent_url,
            agent_addresses=listed,
        )
