"""Presence across processes (docs/adr/0044): a gateway writes which node holds each host, an
api process reads it back, and a node that stopped beating holds nothing."""

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.nodes import ALIVE_WITHIN, Nodes
from tether.server.services.presence import Presence
from tether.server.store.db import utcnow
from tether.server.store.tables import hosts, platform_nodes

from ..support import FakeLink, add_host


async def holders(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as conn:
        return {r.id: r.node_id for r in await conn.execute(select(hosts.c.id, hosts.c.node_id))}


async def test_the_api_sees_hosts_held_by_a_live_gateway_and_not_by_a_dead_one(
    engine: AsyncEngine,
) -> None:
    a, b = await add_host(engine, "ws-a"), await add_host(engine, "ws-b")
    gateway, other = Nodes(engine, "gateway"), Nodes(engine, "gateway")
    await gateway.join()
    await other.join()
    held_here = Presence(engine, node_id=gateway.id)
    api = Presence(engine)
    link_a = FakeLink(a)
    held_here.attach(link_a)
    held_here.attach(FakeLink(b))
    await held_here.flush()
    assert await holders(engine) == {a: gateway.id, b: gateway.id}
    assert await api.refresh_remote(ALIVE_WITHIN) == 2
    assert api.is_online(a)
    assert api.link(a) is None  # never a socket in the api process

    # b moved to the other node before this node's detach was flushed: the detach leaves it.
    held_here.detach(link_a)
    async with engine.begin() as conn:
        await conn.execute(update(hosts).where(hosts.c.id == b).values(node_id=other.id))
    held_here.detach(held_here.link(b))  # type: ignore[arg-type]
    await held_here.flush()
    assert await holders(engine) == {a: None, b: other.id}
    await api.refresh_remote(ALIVE_WITHIN)
    assert not api.is_online(a)
    assert api.is_online(b)

    # The other node stops beating (killed with -9): its host reads offline.
    async with engine.begin() as conn:
        await conn.execute(
            update(platform_nodes)
            .where(platform_nodes.c.id == other.id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=ALIVE_WITHIN + 1))
        )
    assert await api.refresh_remote(ALIVE_WITHIN) == 0
    assert not api.is_online(b)

    # A clean stop lets go of everything the node held, and its row.
    await other.beat()
    await other.leave()
    assert await holders(engine) == {a: None, b: None}
    async with engine.connect() as conn:
        nodes = (await conn.execute(select(platform_nodes.c.id))).scalars().all()
    assert nodes == [gateway.id]


async def test_a_single_process_writes_no_holder(engine: AsyncEngine) -> None:
    host = await add_host(engine, "ws")
    presence = Presence(engine)
    presence.attach(FakeLink(host))
    await presence.flush()
    assert await holders(engine) == {host: None}
    assert presence.is_online(host)
