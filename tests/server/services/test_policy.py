"""Policy delivery: the last policy an agent receives is the current one."""

import asyncio

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode, Policy
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.store.tables import segments

from ..support import FakeLink, add_host


@pytest.fixture
def presence(engine: AsyncEngine) -> Presence:
    return Presence(engine)


@pytest.fixture
def policies(engine: AsyncEngine, presence: Presence) -> PolicyDelivery:
    return PolicyDelivery(engine, presence, send_timeout=0.2)


async def test_deliver_reads_the_current_switch(
    policies: PolicyDelivery, engine: AsyncEngine
) -> None:
    host_id = await add_host(engine, "ws", segment="lab")
    link = FakeLink(host_id)
    await policies.deliver(link)
    async with engine.begin() as conn:
        await conn.execute(update(segments).values(active_response=True))
    await policies.deliver(link)
    assert link.policies == [
        Policy(segment="lab", active_response=False),
        Policy(segment="lab", active_response=True),
    ]


async def test_many_deliveries_share_one_read_and_each_gets_its_own_segment(
    policies: PolicyDelivery, presence: Presence, engine: AsyncEngine
) -> None:
    links = [FakeLink(await add_host(engine, f"h{i}", segment=f"s{i % 2}")) for i in range(6)]
    for link in links:
        presence.attach(link)
    assert await policies.publish_to_hosts([link.host_id for link in links] + ["offline"]) == 6
    assert [link.policies[0].segment for link in links] == ["s0", "s1"] * 3


async def test_publish_reaches_only_connected_hosts_of_the_segment(
    policies: PolicyDelivery, presence: Presence, engine: AsyncEngine
) -> None:
    a = FakeLink(await add_host(engine, "a", segment="lab"))
    b = FakeLink(await add_host(engine, "b", segment="other"))
    await add_host(engine, "c", segment="lab")  # offline
    presence.attach(a)
    presence.attach(b)
    async with engine.connect() as conn:
        lab = (await conn.execute(segments.select().where(segments.c.name == "lab"))).one()
    assert await policies.publish_to_segment(lab.id) == 1
    assert len(a.policies) == 1
    assert b.policies == []


class StuckLink(FakeLink):
    """An agent whose socket takes no more data."""

    async def send_policy(self, policy: Policy) -> None:
        await asyncio.sleep(60)


async def test_an_agent_that_cannot_take_its_policy_is_disconnected(
    policies: PolicyDelivery, engine: AsyncEngine
) -> None:
    link = StuckLink(await add_host(engine, "stuck"))
    await policies.deliver(link)
    assert link.closed == [(CloseCode.IDLE, "The policy could not be delivered; reconnect.")]


async def test_deliveries_to_one_link_are_sent_in_the_order_they_read(
    policies: PolicyDelivery, engine: AsyncEngine
) -> None:
    """A slow send of an old value must not land after a newer one (fail-open otherwise)."""
    host_id = await add_host(engine, "ws", segment="lab")
    sent: list[Policy] = []
    release = asyncio.Event()

    class SlowFirst(FakeLink):
        async def send_policy(self, policy: Policy) -> None:
            if not sent and not release.is_set():
                await release.wait()
            sent.append(policy)

    link = SlowFirst(host_id)
    async with engine.begin() as conn:
        await conn.execute(update(segments).values(active_response=True))
    first = asyncio.create_task(policies.deliver(link))
    await asyncio.sleep(0.05)  # the first delivery has read "on" and is stuck sending
    async with engine.begin() as conn:
        await conn.execute(update(segments).values(active_response=False))
    second = asyncio.create_task(policies.deliver(link))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(first, second)
    assert [p.active_response for p in sent] == [True, False]
