"""Lost wake-ups (docs/adr/0050): a bus message dropped on purpose delays its effect by one
catch-up sweep and never loses it, and the sweep sends nothing an agent already has."""

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode
from tether.server.services.access import ResponseAccess
from tether.server.services.audit import AuditLog
from tether.server.services.bus import Topic
from tether.server.services.buses.local import LocalBus
from tether.server.services.dispatch import Dispatcher
from tether.server.services.hosts import Hosts
from tether.server.services.job_events import JobEvents
from tether.server.services.jobs import Jobs, Selection
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.store.db import utcnow
from tether.server.store.tables import hosts, segments

from ..support import FakeLink, add_host
from .test_jobs import RESPONDER, respond_action

# A response action of the test's own (tests/server/services/test_jobs.py).
__all__ = ["respond_action"]


class DroppingBus(LocalBus):
    """A bus that loses every message of the topics named: what Redis does to a subscriber
    that was away, here on purpose."""

    def __init__(self, *dropped: Topic) -> None:
        super().__init__()
        self.dropped = set(dropped)
        self.lost: list[tuple[Topic, tuple[str, ...]]] = []

    async def publish(self, topic: Topic, ids: Sequence[str]) -> None:
        if topic in self.dropped:
            self.lost.append((topic, tuple(ids)))
            return
        await super().publish(topic, ids)


def frames(link: FakeLink, kind: str) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, link.sent) if m["type"] == kind]


async def switch(engine: AsyncEngine, segment: str, enabled: bool) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == segment).values(active_response=enabled)
        )


async def test_a_lost_policy_change_reaches_the_agent_at_the_next_catch_up(
    engine: AsyncEngine,
) -> None:
    bus = DroppingBus(Topic.POLICY_CHANGED)
    presence = Presence(engine)
    policies = PolicyDelivery(engine, presence, bus=bus)
    policies.serve_agents(bus)
    host = await add_host(engine, "ws-1", segment="ir")
    link = FakeLink(host)
    presence.attach(link)
    await policies.deliver(link)  # as at every connection
    assert [p.active_response for p in link.policies] == [False]
    # Nothing changed: the sweep costs a read and sends nothing.
    assert await policies.catch_up() == 0

    await switch(engine, "ir", True)
    await policies.changed([host])
    assert bus.lost == [(Topic.POLICY_CHANGED, (host,))]
    assert [p.active_response for p in link.policies] == [False]  # the wake-up was lost

    assert await policies.catch_up() == 1
    assert [p.active_response for p in link.policies] == [False, True]
    assert await policies.catch_up() == 0
    assert len(link.policies) == 2


async def test_a_lost_cancellation_reaches_the_agent_once(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    bus = DroppingBus(Topic.JOBS_CANCEL)
    presence = Presence(engine)
    events = JobEvents()
    dispatcher = Dispatcher(engine, audit, presence, ResponseAccess(engine), events, bus=bus)
    dispatcher.serve_agents(bus)
    jobs = Jobs(engine, audit, ResponseAccess(engine), dispatcher, events)
    host = await add_host(engine, "ws-1", segment="ir")
    await switch(engine, "ir", True)
    link = FakeLink(host)
    presence.attach(link)
    await dispatcher.host_connected(link)
    batch = await jobs.submit(
        RESPONDER, "test.respond", {"echo": "x"}, Selection(host_ids=[host]), source="test"
    )
    job_id = batch.jobs[0].id
    assert [f["job_id"] for f in frames(link, "job")] == [job_id]

    await jobs.cancel(job_id, RESPONDER, source="test")
    assert bus.lost == [(Topic.JOBS_CANCEL, (job_id,))]
    assert frames(link, "job.cancel") == []

    await dispatcher.cancel_waiting(only_unsent=True)
    assert frames(link, "job.cancel") == [{"type": "job.cancel", "job_id": job_id}]
    # Sent over this connection already: the next sweep leaves it.
    await dispatcher.cancel_waiting(only_unsent=True)
    assert len(frames(link, "job.cancel")) == 1
    # A new connection of the same host is asked again (the reconnect path).
    again = FakeLink(host)
    presence.attach(again)
    await dispatcher.cancel_waiting(only_unsent=True)
    assert frames(again, "job.cancel") == [{"type": "job.cancel", "job_id": job_id}]


async def test_a_lost_revocation_closes_the_connection_at_the_next_catch_up(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    bus = DroppingBus(Topic.HOSTS_REVOKED)
    presence = Presence(engine)
    hosts_service = Hosts(engine, audit, presence, bus=bus)
    hosts_service.serve_agents(bus)
    host, other = await add_host(engine, "ws-1"), await add_host(engine, "ws-2")
    link, kept = FakeLink(host), FakeLink(other)
    presence.attach(link)
    presence.attach(kept)
    # Revoked by another node, whose wake-up never arrived.
    async with engine.begin() as conn:
        await conn.execute(update(hosts).where(hosts.c.id == host).values(revoked_at=utcnow()))
    await bus.publish(Topic.HOSTS_REVOKED, [host])
    assert link.closed == []
    await hosts_service.disconnect_all_revoked()
    assert [code for code, _ in link.closed] == [CloseCode.REVOKED]
    assert kept.closed == []
