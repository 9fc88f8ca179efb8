"""The host inventory: what each enrolled endpoint is, where it sits, and whether it is online."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode, Hello
from tether.server.errors import Conflict, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.presence import Presence
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import hosts, segments


@dataclass(frozen=True)
class HostView:
    """One row of the inventory as the API shows it."""

    id: str
    hostname: str
    os_family: str
    os_name: str
    os_version: str
    addresses: list[str]
    segment: str
    online: bool
    last_seen: datetime | None
    agent_version: str
    enrolled_at: datetime
    boot_time: datetime | None
    revoked: bool


@dataclass(frozen=True)
class CertificateStatus:
    """What the gateway needs to admit or refuse a certificate."""

    host_id: str
    hostname: str
    revoked: bool


class Hosts:
    """Reads and changes the inventory."""

    def __init__(self, engine: AsyncEngine, audit: AuditLog, presence: Presence) -> None:
        self._engine = engine
        self._audit = audit
        self._presence = presence

    def _view(self, row: Any) -> HostView:
        pending = self._presence.pending_last_seen(row.id)
        stored = as_utc(row.last_seen)
        last_seen = max(filter(None, (pending, stored)), default=None)
        return HostView(
            id=row.id,
            hostname=row.hostname,
            os_family=row.os_family,
            os_name=row.os_name,
            os_version=row.os_version,
            addresses=list(json.loads(row.addresses)),
            segment=row.segment,
            online=self._presence.is_online(row.id),
            last_seen=last_seen,
            agent_version=row.agent_version,
            enrolled_at=as_utc(row.enrolled_at),  # type: ignore[arg-type]
            boot_time=as_utc(row.boot_time),
            revoked=row.revoked_at is not None,
        )

    def _query(self) -> Any:
        return select(hosts, segments.c.name.label("segment")).join(
            segments, segments.c.id == hosts.c.segment_id
        )

    async def list(self) -> list[HostView]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(self._query().order_by(hosts.c.hostname, hosts.c.id))).all()
        return [self._view(r) for r in rows]

    async def get(self, ref: str) -> HostView:
        """A host by id, or by hostname when exactly one host has it."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    self._query().where(or_(hosts.c.id == ref, hosts.c.hostname == ref)).limit(3)
                )
            ).all()
        by_id = [r for r in rows if r.id == ref]
        if by_id:
            return self._view(by_id[0])
        if not rows:
            raise NotFound(f"No host has the id or hostname {ref!r}.")
        if len(rows) > 1:
            raise Conflict(f"Several hosts are named {ref!r}; use the host id instead.")
        return self._view(rows[0])

    async def certificate_status(self, serial: str) -> CertificateStatus | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(hosts.c.id, hosts.c.hostname, hosts.c.revoked_at).where(
                        hosts.c.cert_serial == serial
                    )
                )
            ).first()
        if row is None:
            return None
        return CertificateStatus(row.id, row.hostname, row.revoked_at is not None)

    async def record_hello(self, host_id: str, hello: Hello) -> None:
        """Store what the agent reported about itself (informational; identity is the cert)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(hosts)
                .where(hosts.c.id == host_id)
                .values(
                    hostname=hello.hostname,
                    os_family=hello.os.family,
                    os_name=hello.os.name,
                    os_version=hello.os.version,
                    addresses=json.dumps(hello.addresses),
                    agent_version=hello.agent_version,
                    protocol_version=hello.protocol_version,
                    boot_time=hello.boot_time,
                    last_seen=utcnow(),
                )
            )

    async def revoke(self, ref: str, *, actor: str, source: str) -> HostView:
        """Refuse the host's certificate from now on and close its live connection."""
        host = await self.get(ref)
        if host.revoked:
            raise Conflict(f"Host {host.hostname} ({host.id}) is already revoked.")
        async with self._engine.begin() as conn:
            await conn.execute(
                update(hosts).where(hosts.c.id == host.id).values(revoked_at=utcnow())
            )
        await self._audit.record(
            "host.revoke",
            actor=actor,
            target=f"host:{host.id}",
            source=source,
            details={"hostname": host.hostname, "was_online": host.online},
        )
        link = self._presence.link(host.id)
        if link is not None:
            await link.disconnect(CloseCode.REVOKED, "This host's certificate was revoked.")
        return await self.get(host.id)
