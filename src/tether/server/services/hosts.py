"""The host inventory: what each enrolled endpoint is, where it sits, and whether it is online."""

import builtins
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import CloseCode, Hello, IsolationReport, hostname_key
from tether.server.errors import Conflict, Invalid, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.batching import Coalesced
from tether.server.services.bus import Bus, Topic
from tether.server.services.buses.local import LocalBus
from tether.server.services.endpoint_misbehaviour import ISOLATION_REPORT, EndpointMisbehaviour
from tether.server.services.file_transfers import SCRIPT_ACTION
from tether.server.services.isolation import NOT_ISOLATED, IsolationView, isolation_views
from tether.server.services.presence import Presence
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import hosts, jobs, segments


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
    # The agent said the endpoint owner switched response actions off (its word, shown as such).
    response_disabled_locally: bool
    isolation: IsolationView = NOT_ISOLATED
    # The protocol version its agent said in its last hello (None before the first): during an
    # upgrade, the hosts still on the previous version.
    protocol_version: int | None = None
    # The name of the platform node holding its connection (several nodes, docs/adr/0050).
    node: str | None = None


@dataclass(frozen=True)
class CertificateStatus:
    """What the gateway needs to admit or refuse a certificate."""

    host_id: str
    hostname: str
    revoked: bool
    # The certificate is the one the host was given during a CA rotation and has not connected
    # with before: the gateway makes it the host's certificate (`adopt_next_certificate`).
    next_certificate: bool = False


# Serials looked up in one statement at most (SQLite's and PostgreSQL's parameter limits are far
# above this).
_LOOKUP_CHUNK = 500


# A prefix of a host id (a UUID): hexadecimal digits and dashes, long enough to mean something.
_ID_PREFIX = re.compile(r"[0-9A-Fa-f][0-9A-Fa-f-]{3,35}")
# Ambiguous references list this many candidates at most.
_MATCHES_SHOWN = 5


def _pick(ref: str, rows: Sequence[Any]) -> Any:
    """The host `ref` names among `rows` (live ones first, newest first), or a one-sentence
    error: an exact id, else the hostname, else the id prefix."""
    for row in rows:
        if row.id == ref:
            return row
    for kind, found in (
        ("are named", [r for r in rows if r.hostname == ref]),
        ("have an id starting with", [r for r in rows if r.id.startswith(ref.lower())]),
    ):
        if not found:
            continue
        live = [r for r in found if r.revoked_at is None]
        if len(live) > 1:
            listed = ", ".join(f"{r.id} ({r.hostname})" for r in live[:_MATCHES_SHOWN])
            raise Conflict(
                f"Several hosts {kind} {ref!r}: {listed}; use more of the id of the one meant."
            )
        return (live or found)[0]
    raise NotFound(f"No host has the id or hostname {ref!r}.")


class Hosts:
    """Reads and changes the inventory."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        presence: Presence,
        misbehaviour: EndpointMisbehaviour | None = None,
        bus: Bus | None = None,
    ) -> None:
        self._misbehaviour = misbehaviour or EndpointMisbehaviour(audit)
        self._engine = engine
        # A revocation closes the connection in whichever process holds it (docs/adr/0044).
        if bus is None:
            bus = LocalBus()
            self.serve_agents(bus)
        self._bus = bus
        self._audit = audit
        self._presence = presence
        self._lookups: Coalesced[None, dict[str, CertificateStatus]] = Coalesced(
            self._look_up_serials
        )
        self._hellos: Coalesced[dict[str, Any], None] = Coalesced(self._store_hellos)

    def serve_agents(self, bus: Bus) -> None:
        """Close the connections held here of the hosts `bus` says were revoked."""
        bus.subscribe(Topic.HOSTS_REVOKED, self.disconnect_revoked)

    async def disconnect_revoked(self, host_ids: Sequence[str]) -> int:
        """Close the connections held here of those of `host_ids` that are revoked; returns how
        many. Also run over every connected host now and then, for a wake-up that was lost."""
        here = [h for h in host_ids if self._presence.link(h) is not None]
        revoked: list[str] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(here), 500):
                revoked += (
                    await conn.execute(
                        select(hosts.c.id).where(
                            hosts.c.id.in_(here[start : start + 500]),
                            hosts.c.revoked_at.is_not(None),
                        )
                    )
                ).scalars()
        for host_id in revoked:
            link = self._presence.link(host_id)
            if link is not None:
                await link.disconnect(CloseCode.REVOKED, "This host's certificate was revoked.")
        return len(revoked)

    async def disconnect_all_revoked(self) -> None:
        """`disconnect_revoked` over every host connected here."""
        await self.disconnect_revoked(self._presence.online_ids())

    def _view(self, row: Any, isolation: IsolationView = NOT_ISOLATED) -> HostView:
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
            response_disabled_locally=bool(row.response_disabled_locally),
            isolation=isolation,
            protocol_version=row.protocol_version,
            node=self._presence.node_of(row.id),
        )

    def _query(self) -> Any:
        return select(hosts, segments.c.name.label("segment")).join(
            segments, segments.c.id == hosts.c.segment_id
        )

    async def list(self) -> list[HostView]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(self._query().order_by(hosts.c.hostname, hosts.c.id))).all()
            isolation = await isolation_views(conn)
        return [self._view(r, isolation.get(r.id, NOT_ISOLATED)) for r in rows]

    async def get(self, ref: str) -> HostView:
        """A host by reference, the one rule every command and page uses (docs/adr/0045): its
        id, its hostname, or a unique prefix of its id (at least 4 characters). Hosts that are
        not revoked are preferred: a revoked host neither makes a name or prefix ambiguous nor
        answers to it while a live one does, and is found only when every match is revoked."""
        async with self._engine.connect() as conn:
            row = await self._find(conn, ref, self._query())
            isolation = await isolation_views(conn, [row.id])
        return self._view(row, isolation.get(row.id, NOT_ISOLATED))

    async def resolve(self, ref: str) -> str:
        """The id of the host `ref` names, by the rule of `get`, in one query: what a request
        that only acts on the host (a ping, a job) needs, without the host's view."""
        query = select(hosts.c.id, hosts.c.hostname, hosts.c.revoked_at)
        async with self._engine.connect() as conn:
            row = await self._find(conn, ref, query)
        return str(row.id)

    @staticmethod
    async def _find(conn: AsyncConnection, ref: str, query: Any) -> Any:
        """The row of `query` for the host `ref` names, or a one-sentence error."""
        ref = ref.strip()
        if not ref:
            raise Invalid("Name a host by its id, a prefix of its id, or its hostname.")
        matches = or_(hosts.c.id == ref, hosts.c.hostname == ref)
        by_prefix = _ID_PREFIX.fullmatch(ref) is not None
        if by_prefix:
            matches = or_(matches, hosts.c.id.startswith(ref.lower(), autoescape=True))
        rows = (
            await conn.execute(
                query.where(matches)
                .order_by(hosts.c.revoked_at.is_not(None), hosts.c.enrolled_at.desc())
                .limit(_MATCHES_SHOWN + 1)
            )
        ).all()
        return _pick(ref, rows)

    async def certificate_status(self, serial: str) -> CertificateStatus | None:
        """The host holding this certificate serial, read when asked (batched with others)."""
        return (await self._lookups.submit(serial, None)).get(serial)

    async def _look_up_serials(self, serials: dict[str, None]) -> dict[str, CertificateStatus]:
        wanted = list(serials)
        found: dict[str, CertificateStatus] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                rows = await conn.execute(
                    select(
                        hosts.c.cert_serial,
                        hosts.c.next_cert_serial,
                        hosts.c.id,
                        hosts.c.hostname,
                        hosts.c.revoked_at,
                    ).where(
                        or_(hosts.c.cert_serial.in_(chunk), hosts.c.next_cert_serial.in_(chunk))
                    )
                )
                for row in rows:
                    revoked = row.revoked_at is not None
                    found[row.cert_serial] = CertificateStatus(row.id, row.hostname, revoked)
                    if row.next_cert_serial is not None:
                        found[row.next_cert_serial] = CertificateStatus(
                            row.id, row.hostname, revoked, next_certificate=True
                        )
        return found

    async def give_next_certificate(
        self, host_id: str, serial: str, cert_sha256: str, ca_sha256: str
    ) -> None:
        """Keep the certificate a host was just issued under the new CA (accepted beside its
        current one until it connects with it), on the record."""
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                update(hosts).where(hosts.c.id == host_id).values(next_cert_serial=serial)
            )
            await tx.record(
                "host.certificate",
                actor="platform",
                target=f"host:{host_id}",
                details={
                    "reason": "ca rotation",
                    "cert_serial": serial,
                    "cert_sha256": cert_sha256,
                    "ca_sha256": ca_sha256,
                },
            )

    async def adopt_next_certificate(
        self, host_id: str, serial: str, cert_sha256: str, ca_sha256: str
    ) -> None:
        """The host connected with the certificate it was given under the new CA: from now on
        only that one is accepted (a copy of the old one is refused)."""
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                update(hosts)
                .where(hosts.c.id == host_id, hosts.c.next_cert_serial == serial)
                .values(
                    cert_serial=serial,
                    next_cert_serial=None,
                    cert_sha256=cert_sha256,
                    cert_ca=ca_sha256,
                )
            )
            await tx.record(
                "host.certificate_adopted",
                actor="endpoint",
                target=f"host:{host_id}",
                details={"cert_serial": serial, "ca_sha256": ca_sha256},
            )

    async def named_like(self, hostname: str, *, other_than: str) -> "builtins.list[str]":
        """Ids of the other enrolled (not revoked) hosts whose name reads like `hostname`
        (`hostname_key`): the names `tether run NAME` could confuse."""
        key = hostname_key(hostname)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(hosts.c.id, hosts.c.hostname).where(
                    hosts.c.revoked_at.is_(None), hosts.c.id != other_than
                )
            )
            return sorted(r.id for r in rows if hostname_key(r.hostname) == key)

    async def record_hello(self, host_id: str, hello: Hello) -> None:
        """Store what the agent reported about itself (informational; identity is the cert).

        Returns once stored; hellos arriving together are stored in one statement.
        """
        await self._hellos.submit(
            host_id,
            {
                "b_id": host_id,
                "b_hostname": hello.hostname,
                "b_os_family": hello.os.family,
                "b_os_name": hello.os.name,
                "b_os_version": hello.os.version,
                "b_addresses": json.dumps(hello.addresses),
                "b_agent_version": hello.agent_version,
                "b_protocol_version": hello.protocol_version,
                "b_boot_time": hello.boot_time,
                "b_response_disabled_locally": hello.response_disabled_locally,
                "b_last_seen": utcnow(),
                "b_isolation": (
                    hello.isolation.model_dump_json() if hello.isolation is not None else None
                ),
            },
        )

    async def _store_hellos(self, batch: dict[str, dict[str, Any]]) -> None:
        statement = (
            update(hosts)
            .where(hosts.c.id == bindparam("b_id"))
            .values(
                hostname=bindparam("b_hostname"),
                os_family=bindparam("b_os_family"),
                os_name=bindparam("b_os_name"),
                os_version=bindparam("b_os_version"),
                addresses=bindparam("b_addresses"),
                agent_version=bindparam("b_agent_version"),
                protocol_version=bindparam("b_protocol_version"),
                boot_time=bindparam("b_boot_time"),
                response_disabled_locally=bindparam("b_response_disabled_locally"),
                last_seen=bindparam("b_last_seen"),
                isolation_reported=bindparam("b_isolation"),
                isolation_reported_at=bindparam("b_last_seen"),
            )
        )
        async with self._engine.begin() as conn:
            await conn.execute(statement, list(batch.values()))

    async def record_isolation(self, host_id: str, report: IsolationReport) -> IsolationReport:
        """The agent's isolation changed outside an isolation job: keep what it says now.

        Returns the report as it may be recorded: a job it names that is not a script of this
        host is dropped from it (and counted as misbehaviour), so no other host's job history
        shows the claim."""
        if report.job_id is not None and not await self._is_own_script(host_id, report.job_id):
            await self._misbehaviour.note(host_id, ISOLATION_REPORT, report.job_id)
            report = report.model_copy(update={"job_id": None})
        async with self._engine.begin() as conn:
            await conn.execute(
                update(hosts)
                .where(hosts.c.id == host_id)
                .values(
                    isolation_reported=report.status.model_dump_json(),
                    isolation_reported_at=utcnow(),
                )
            )
        return report

    async def _is_own_script(self, host_id: str, job_id: str) -> bool:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(jobs.c.host_id, jobs.c.action).where(jobs.c.id == job_id))
            ).one_or_none()
        return row is not None and row.host_id == host_id and row.action == SCRIPT_ACTION

    async def revoke(self, ref: str, *, actor: str, source: str) -> HostView:
        """Refuse the host's certificate from now on and close its live connection."""
        host = await self.get(ref)
        if host.revoked:
            raise Conflict(f"Host {host.hostname} ({host.id}) is already revoked.")
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                update(hosts).where(hosts.c.id == host.id).values(revoked_at=utcnow())
            )
            await tx.record(
                "host.revoke",
                actor=actor,
                target=f"host:{host.id}",
                source=source,
                details={"hostname": host.hostname, "was_online": host.online},
            )
        await self._bus.publish(Topic.HOSTS_REVOKED, [host.id])
        return await self.get(host.id)
