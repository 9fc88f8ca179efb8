"""Device segments: groups of hosts that share a response policy, and moving hosts between them.

Every segment has an Active Response switch, off until an admin turns it on. Changes are audited
with the state before and after, and the hosts they affect are told at once (PolicyDelivery).
"""

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import Approval, Tier, approval_needed
from tether.server.errors import Conflict, Invalid, NotFound
from tether.server.services.approvals import check_timeout
from tether.server.services.audit import AuditLog
from tether.server.services.policy import PolicyDelivery
from tether.server.services.service_tokens import script_tokens_in
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import enrollment_tokens, hosts, segments

SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
DEFAULT_SEGMENT = "default"


def check_segment_name(name: str) -> str:
    # fullmatch: with match and "$", a trailing newline would slip into a name shown in terminals.
    if not SEGMENT_NAME.fullmatch(name):
        raise Invalid(
            "A segment name is 1 to 64 letters, digits, spaces, dots, dashes or underscores."
        )
    return name


def _on_off(enabled: bool) -> str:
    return "on" if enabled else "off"


async def ensure_segment(conn: AsyncConnection, name: str) -> tuple[int, bool]:
    """The id of segment `name`, creating it when missing; the flag says it was created."""
    check_segment_name(name)
    found = (await conn.execute(select(segments.c.id).where(segments.c.name == name))).scalar()
    if found is not None:
        return int(found), False
    try:
        async with conn.begin_nested():
            result = await conn.execute(
                insert(segments).values(name=name, active_response=False, created_at=utcnow())
            )
        return int(result.inserted_primary_key[0]), True  # type: ignore[index]
    except IntegrityError:
        found = (await conn.execute(select(segments.c.id).where(segments.c.name == name))).scalar()
        return int(found), False  # type: ignore[arg-type]


@dataclass(frozen=True)
class SegmentView:
    """One segment as the API shows it."""

    name: str
    active_response: bool
    # Live hosts; revoked ones still in the segment are counted apart (they answer to nothing,
    # but deleting the segment waits until they are moved too).
    hosts: int
    created_at: datetime
    # Four-eyes approval: "off", "respond" or "script", and how long a request may wait.
    approval: str = Approval.OFF.value
    approval_timeout_seconds: int = 86400
    revoked_hosts: int = 0


@dataclass(frozen=True)
class _Row:
    id: int
    name: str
    active_response: bool


async def _locked(conn: AsyncConnection, name: str) -> _Row:
    """Segment `name`, row-locked until the transaction ends (PostgreSQL; SQLite locks it all)."""
    row = (
        await conn.execute(
            select(segments.c.id, segments.c.name, segments.c.active_response)
            .where(segments.c.name == name)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"No segment is named {name!r}.")
    return _Row(int(row.id), row.name, bool(row.active_response))


class Segments:
    """Creates, renames, switches and deletes segments; moves hosts between them."""

    def __init__(self, engine: AsyncEngine, audit: AuditLog, policies: PolicyDelivery) -> None:
        self._engine = engine
        self._audit = audit
        self._policies = policies

    async def list(self) -> list[SegmentView]:
        """Every segment with its switch and how many live and how many revoked hosts it holds."""
        in_segment = hosts.c.segment_id == segments.c.id
        live = select(func.count(hosts.c.id)).where(in_segment, hosts.c.revoked_at.is_(None))
        revoked = select(func.count(hosts.c.id)).where(in_segment, hosts.c.revoked_at.is_not(None))
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        segments,
                        live.scalar_subquery().label("hosts"),
                        revoked.scalar_subquery().label("revoked_hosts"),
                    ).order_by(segments.c.name)
                )
            ).all()
        return [
            SegmentView(
                name=r.name,
                active_response=bool(r.active_response),
                hosts=int(r.hosts),
                revoked_hosts=int(r.revoked_hosts),
                created_at=as_utc(r.created_at),  # type: ignore[arg-type]
                approval=r.approval,
                approval_timeout_seconds=int(r.approval_timeout_seconds),
            )
            for r in rows
        ]

    async def get(self, name: str) -> SegmentView:
        for view in await self.list():
            if view.name == name:
                return view
        raise NotFound(f"No segment is named {name!r}.")

    async def create(
        self, name: str, *, active_response: bool = False, actor: str, source: str
    ) -> SegmentView:
        check_segment_name(name)
        try:
            async with self._audit.transaction() as tx:
                await tx.conn.execute(
                    insert(segments).values(
                        name=name, active_response=active_response, created_at=utcnow()
                    )
                )
                await tx.record(
                    "segment.create",
                    actor=actor,
                    target=f"segment:{name}",
                    source=source,
                    details={"name": name, "active_response": active_response},
                )
        except IntegrityError as exc:
            raise Conflict(f"A segment named {name!r} already exists.") from exc
        return await self.get(name)

    async def rename(self, name: str, new_name: str, *, actor: str, source: str) -> SegmentView:
        check_segment_name(new_name)
        if new_name == name:
            raise Invalid(f"Segment {name!r} already has that name.")
        try:
            async with self._audit.transaction() as tx:
                row = await _locked(tx.conn, name)
                await tx.conn.execute(
                    update(segments).where(segments.c.id == row.id).values(name=new_name)
                )
                await tx.record(
                    "segment.rename",
                    actor=actor,
                    target=f"segment:{new_name}",
                    source=source,
                    details={"before": {"name": name}, "after": {"name": new_name}},
                )
        except IntegrityError as exc:
            raise Conflict(f"A segment named {new_name!r} already exists.") from exc
        # The policy names the segment, so its agents hear about the new name.
        await self._policies.changed_in_segment(row.id)
        return await self.get(new_name)

    async def set_active_response(
        self, name: str, enabled: bool, *, actor: str, source: str
    ) -> SegmentView:
        """Switch Active Response on or off; setting the position it already has changes nothing."""
        async with self._audit.transaction() as tx:
            row = await _locked(tx.conn, name)
            if row.active_response != enabled:
                await tx.conn.execute(
                    update(segments).where(segments.c.id == row.id).values(active_response=enabled)
                )
                await tx.record(
                    "segment.active_response",
                    actor=actor,
                    target=f"segment:{name}",
                    source=source,
                    details={
                        "before": {"active_response": row.active_response},
                        "after": {"active_response": enabled},
                    },
                )
        if row.active_response == enabled:
            return await self.get(name)
        await self._policies.changed_in_segment(row.id)
        return await self.get(name)

    async def set_approval(
        self,
        name: str,
        approval: Approval | None,
        timeout_seconds: int | None,
        *,
        actor: str,
        source: str,
    ) -> SegmentView:
        """Set which actions need a second person's approval and how long a request waits.

        Refused while a usable script-tier service token acts in the segment and scripts would
        need approval: a token never holds the script tier there (docs/adr/0039), and cutting
        its scope silently would break the automation that relies on it without a word.
        """
        if timeout_seconds is not None:
            check_timeout(timeout_seconds)
        async with self._audit.transaction() as tx:
            await _locked(tx.conn, name)
            before = (
                await tx.conn.execute(
                    select(segments.c.approval, segments.c.approval_timeout_seconds).where(
                        segments.c.name == name
                    )
                )
            ).one()
            after_approval = approval.value if approval is not None else before.approval
            after_timeout = (
                timeout_seconds
                if timeout_seconds is not None
                else int(before.approval_timeout_seconds)
            )
            if approval_needed(after_approval, Tier.SCRIPT):
                tokens = await script_tokens_in(tx.conn, name)
                if tokens:
                    raise Conflict(
                        f"Service token {tokens[0]} holds the script tier in segment {name}, "
                        "and a token never holds it where scripts need approval; revoke it "
                        "(automation can use a respond-tier token) before changing the setting."
                    )
            changed = (after_approval, after_timeout) != (
                before.approval,
                int(before.approval_timeout_seconds),
            )
            if changed:
                await tx.conn.execute(
                    update(segments)
                    .where(segments.c.name == name)
                    .values(approval=after_approval, approval_timeout_seconds=after_timeout)
                )
                await tx.record(
                    "segment.approval",
                    actor=actor,
                    target=f"segment:{name}",
                    source=source,
                    details={
                        "before": {
                            "approval": before.approval,
                            "approval_timeout_seconds": int(before.approval_timeout_seconds),
                        },
                        "after": {
                            "approval": after_approval,
                            "approval_timeout_seconds": after_timeout,
                        },
                    },
                )
        return await self.get(name)

    async def delete(self, name: str, *, actor: str, source: str) -> None:
        """Delete an empty segment and the enrollment tokens that would put hosts into it."""
        async with self._audit.transaction() as tx:
            conn = tx.conn
            row = await _locked(conn, name)
            # COUNT of a column counts its non-null values: the revoked hosts.
            count, revoked = (
                await conn.execute(
                    select(func.count(hosts.c.id), func.count(hosts.c.revoked_at)).where(
                        hosts.c.segment_id == row.id
                    )
                )
            ).one()
            if count:
                noun = "host" if count == 1 else "hosts"
                # The page counts revoked hosts apart; the refusal says they are among these.
                note = f" ({revoked} revoked)" if revoked else ""
                raise Conflict(
                    f"Segment {name!r} still holds {count} {noun}{note}; "
                    "move them to another segment before deleting it."
                )
            token_ids = list(
                (
                    await conn.execute(
                        select(enrollment_tokens.c.id).where(
                            enrollment_tokens.c.segment_id == row.id
                        )
                    )
                ).scalars()
            )
            if token_ids:
                # A token of a deleted segment must never enroll anything, so it goes too. Hosts
                # it enrolled earlier (since moved elsewhere) lose the link to it; the audit log
                # keeps which token enrolled them (agent.enroll records).
                await conn.execute(
                    update(hosts)
                    .where(hosts.c.enrollment_token_id.in_(token_ids))
                    .values(enrollment_token_id=None)
                )
                await conn.execute(
                    delete(enrollment_tokens).where(enrollment_tokens.c.id.in_(token_ids))
                )
            await conn.execute(delete(segments).where(segments.c.id == row.id))
            await tx.record(
                "segment.delete",
                actor=actor,
                target=f"segment:{name}",
                source=source,
                details={
                    "before": {"name": name, "active_response": row.active_response},
                    "enrollment_tokens_deleted": token_ids,
                },
            )

    async def move_host(
        self, host_id: str, segment: str, *, actor: str, source: str
    ) -> tuple[str, str]:
        """Put the host into `segment`; returns (segment before, segment after).

        Moving a host to the segment it is in changes nothing and is not audited.
        """
        async with self._audit.transaction() as tx:
            conn = tx.conn
            target = await _locked(conn, segment)
            current = (
                await conn.execute(
                    select(hosts.c.hostname, segments.c.name, segments.c.active_response)
                    .join(segments, segments.c.id == hosts.c.segment_id)
                    .where(hosts.c.id == host_id)
                )
            ).first()
            if current is None:
                raise NotFound(f"No host has the id {host_id!r}.")
            if current.name != target.name:
                await conn.execute(
                    update(hosts).where(hosts.c.id == host_id).values(segment_id=target.id)
                )
                await tx.record(
                    "host.move",
                    actor=actor,
                    target=f"host:{host_id}",
                    source=source,
                    details={
                        "hostname": current.hostname,
                        "before": {
                            "segment": current.name,
                            "active_response": bool(current.active_response),
                        },
                        "after": {
                            "segment": target.name,
                            "active_response": target.active_response,
                        },
                    },
                )
        if current.name == target.name:
            return current.name, target.name
        await self._policies.changed([host_id])
        return current.name, target.name
