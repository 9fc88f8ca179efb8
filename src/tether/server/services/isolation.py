"""Host isolation on the platform: requests, the admin-set allowlist, and each host's state.

Isolating is a job (`isolation.isolate`, `isolation.release`): it waits as pending for an offline
host like any job and is checked like any response action. A host's isolation state is read
from its isolation jobs, never stored beside them, so it cannot disagree with what the agents
reported (docs/adr/0018):

- the newest isolation job that succeeded says whether the host is isolated, in which mode,
  since when and on whose request;
- a newer one still unfinished makes it `isolation pending` or `unisolation pending`;
- a newer one that failed is shown with its reason beside the state that still holds (a failed
  isolation leaves the host as it was: the agent rolls back).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol.action_names import ISOLATION_ISOLATE, ISOLATION_RELEASE
from tether.protocol.isolation import MAX_ALLOW_RULES, AllowRule, IsolationMode, IsolationStatus
from tether.server.errors import Invalid
from tether.server.services.audit import AuditLog
from tether.server.services.isolation_allowlist import read_allowlist, write_allowlist
from tether.server.services.jobs import MAX_TTL, BatchView, Jobs, Selection
from tether.server.services.policy import PolicyDelivery
from tether.server.services.users import User
from tether.server.store.db import as_utc
from tether.server.store.tables import batches, hosts, jobs

ISOLATE = ISOLATION_ISOLATE
RELEASE = ISOLATION_RELEASE
ACTIONS = (ISOLATE, RELEASE)
# Awaiting approval counts as pending: the host's page says a request is under way.
_UNFINISHED = ("awaiting_approval", "queued", "delivered", "running")

RESERVED_SENTENCE = (
    "Isolate and release hosts with 'tether isolate' and 'tether unisolate' "
    "(POST /api/v1/isolation/isolate and /release), which apply the platform's allowlist."
)


@dataclass(frozen=True)
class IsolationView:
    """A host's isolation as the inventory shows it."""

    # "not isolated", "isolated", "isolation pending" or "unisolation pending".
    state: str
    mode: str | None = None
    since: datetime | None = None
    by: str | None = None
    # The newest request's failure, when it failed; the state above still holds.
    failed: str | None = None
    job_id: str | None = None
    # The state comes from the agent's own report, newer than any isolation job and different
    # from what they say: a script or the endpoint owner changed it, or re-asserting it failed.
    reported_by_endpoint: bool = False


NOT_ISOLATED = IsolationView(state="not isolated")


def _mode(args_text: str) -> str | None:
    try:
        mode = json.loads(args_text).get("mode")
    except (ValueError, AttributeError):
        return None
    return str(mode) if mode is not None else None


@dataclass(frozen=True)
class Reported:
    """What the agent last said its firewall holds, and when the platform heard it."""

    status: IsolationStatus
    at: datetime


def _endpoint_says(
    held: IsolationView, reported: Reported | None, history: list[Any]
) -> IsolationView:
    """`held` unless the agent reported something else after the last isolation job ended."""
    if reported is None:
        return held
    ends = [end for row in history if (end := as_utc(row.finished_at)) is not None]
    if ends and max(ends) >= reported.at:
        return held
    status = reported.status
    mode = status.mode.value if status.mode is not None else None
    if status.isolated == (held.state == "isolated") and (not status.isolated or mode == held.mode):
        return held
    if status.isolated:
        return IsolationView(
            state="isolated",
            mode=mode,
            since=status.since,
            by="endpoint",
            reported_by_endpoint=True,
        )
    return IsolationView(state="not isolated", reported_by_endpoint=True)


def _view(history: list[Any], reported: Reported | None = None) -> IsolationView:
    """The state one host's isolation jobs, oldest first, and its agent's report add up to."""
    held = NOT_ISOLATED
    for row in history:
        if row.state == "succeeded":
            if row.action == ISOLATE:
                held = IsolationView(
                    state="isolated",
                    mode=_mode(row.args),
                    since=as_utc(row.finished_at),
                    by=row.created_by,
                    job_id=row.id,
                )
            else:
                held = IsolationView(state="not isolated", job_id=row.id)
    held = _endpoint_says(held, reported, history)
    if not history:
        return held
    newest = history[-1]
    if newest.state == "succeeded" or (
        newest.state == "cancelled" and newest.error and newest.error.startswith("Cancelled by")
    ):
        # Done, or withdrawn by someone before it was sent: what held before still holds.
        return held
    if newest.state in _UNFINISHED:
        pending = "isolation pending" if newest.action == ISOLATE else "unisolation pending"
        return IsolationView(
            state=pending,
            mode=_mode(newest.args) if newest.action == ISOLATE else held.mode,
            since=held.since,
            by=newest.created_by,
            job_id=newest.id,
        )
    doing = "isolate" if newest.action == ISOLATE else "release"
    reason = newest.error or f"the job ended {newest.state}"
    return IsolationView(
        state=held.state,
        mode=held.mode,
        since=held.since,
        by=held.by,
        failed=f"The request to {doing} the host failed: {reason}",
        job_id=newest.id,
        reported_by_endpoint=held.reported_by_endpoint,
    )


async def isolation_views(
    conn: AsyncConnection, host_ids: Sequence[str] | None = None
) -> dict[str, IsolationView]:
    """The isolation of each host that ever had an isolation job (the rest: NOT_ISOLATED)."""
    query = (
        select(
            jobs.c.id,
            jobs.c.host_id,
            jobs.c.action,
            jobs.c.state,
            jobs.c.created_by,
            jobs.c.finished_at,
            jobs.c.error,
            batches.c.args,
        )
        .join(batches, batches.c.id == jobs.c.batch_id)
        .where(jobs.c.action.in_(ACTIONS))
        .order_by(jobs.c.created_at, jobs.c.id)
    )
    if host_ids is not None:
        query = query.where(jobs.c.host_id.in_(list(host_ids)))
    histories: dict[str, list[Any]] = {}
    for row in (await conn.execute(query)).all():
        histories.setdefault(row.host_id, []).append(row)
    reports = select(hosts.c.id, hosts.c.isolation_reported, hosts.c.isolation_reported_at).where(
        hosts.c.isolation_reported.is_not(None)
    )
    if host_ids is not None:
        reports = reports.where(hosts.c.id.in_(list(host_ids)))
    reported: dict[str, Reported] = {}
    for report in (await conn.execute(reports)).all():
        at = as_utc(report.isolation_reported_at)
        try:
            status = IsolationStatus.model_validate_json(report.isolation_reported)
        except ValidationError:
            continue  # validated when received; a row this old version cannot read is ignored
        if at is not None:
            reported[report.id] = Reported(status, at)
    return {
        host_id: _view(histories.get(host_id, []), reported.get(host_id))
        for host_id in histories.keys() | reported.keys()
    }


class Isolation:
    def __init__(
        self, engine: AsyncEngine, audit: AuditLog, jobs: Jobs, policies: PolicyDelivery
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._jobs = jobs
        self._policies = policies
        for action in ACTIONS:
            jobs.reserve(action, RESERVED_SENTENCE)

    async def allowlist(self) -> list[AllowRule]:
        async with self._engine.connect() as conn:
            return await read_allowlist(conn)

    async def set_allowlist(
        self, rules: list[AllowRule], *, actor: str, source: str
    ) -> list[AllowRule]:
        """Replace the allowlist; connected agents get it in their policy at once (isolated hosts
        re-apply their rules with it), the others when they next connect."""
        if len(rules) > MAX_ALLOW_RULES:
            raise Invalid(f"The allowlist holds at most {MAX_ALLOW_RULES} entries.")
        rules = list(dict.fromkeys(rules))
        async with self._audit.transaction() as tx:
            # Read and replaced in one transaction, so the audit's "before" is what was replaced.
            before = await read_allowlist(tx.conn)
            await write_allowlist(tx.conn, rules)
            await tx.record(
                "isolation.allowlist",
                actor=actor,
                target="settings",
                source=source,
                details={
                    "before": [r.model_dump(mode="json") for r in before],
                    "after": [r.model_dump(mode="json") for r in rules],
                },
            )
        # Connected agents get it at once: isolated ones re-apply their rules with it, the
        # others keep it for the isolation their scripts may ask for.
        await self._policies.changed_everywhere()
        return rules

    async def isolate(
        self,
        user: User,
        selection: Selection,
        mode: IsolationMode,
        *,
        source: str,
        not_after: datetime | None = None,
        reason: str | None = None,
    ) -> BatchView:
        """Isolate the hosts; `reason` (why, in the requester's words) goes into the record."""
        allow = [r.model_dump(mode="json") for r in await self.allowlist()]
        return await self._request(
            user,
            ISOLATE,
            {"mode": mode.value, "allow": allow},
            selection,
            source,
            not_after,
            reason,
        )

    async def release(
        self,
        user: User,
        selection: Selection,
        *,
        source: str,
        not_after: datetime | None = None,
        reason: str | None = None,
    ) -> BatchView:
        """Release the hosts; `reason` goes into the record as for `isolate`."""
        return await self._request(user, RELEASE, {}, selection, source, not_after, reason)

    async def _request(
        self,
        user: User,
        action: str,
        args: dict[str, Any],
        selection: Selection,
        source: str,
        not_after: datetime | None,
        reason: str | None,
    ) -> BatchView:
        # Pending until the host returns: as long as a job may wait.
        batch = await self._jobs.submit(
            user,
            action,
            args,
            selection,
            ttl=MAX_TTL,
            not_after=not_after,
            source=source,
            reserved=True,
            reason=reason,
        )
        await self._withdraw_older(batch, user)
        return batch

    async def _withdraw_older(self, batch: BatchView, user: User) -> None:
        """An older request still waiting for its host is withdrawn: the newest one decides, and
        an isolate and a release delivered together could run in either order."""
        # A request still awaiting approval withdraws nothing: it may yet be rejected.
        in_batch = select(jobs.c.host_id).where(
            jobs.c.batch_id == batch.id, jobs.c.state == "queued"
        )
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.action.in_(ACTIONS),
                        jobs.c.state == "queued",
                        jobs.c.sent_at.is_(None),
                        jobs.c.batch_id != batch.id,
                        jobs.c.host_id.in_(in_batch.scalar_subquery()),
                    )
                )
            ).all()
        for row in rows:
            await self._jobs.cancel_for_platform(
                row.id,
                user.actor,
                source="platform",
                reason=f"a newer isolation request (batch {batch.id}) replaced it",
            )
