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


async def test_nodes_of_role_all_see_each_other_by_name_and_notice_another_file_store(
    engine: AsyncEngine,
) -> None:
    # docs/adr/0050: every node holds agents and reads which the others hold.
    a_host, b_host = await add_host(engine, "ws-a"), await add_host(engine, "ws-b")
    node_a = Nodes(engine, "all", name="node-a", file_store="store-1")
    node_b = Nodes(engine, "all", name="node-b", file_store="store-1")
    node_c = Nodes(engine, "all", name="node-c", file_store="store-2")
    assert await node_a.join() == []
    assert await node_b.join() == []  # the same store: nothing to say
    assert await node_c.join() == ["node-a", "node-b"]
    on_a = Presence(engine, node_id=node_a.id, node_name="node-a")
    on_b = Presence(engine, node_id=node_b.id, node_name="node-b")
    on_a.attach(FakeLink(a_host))
    on_b.attach(FakeLink(b_host))
    await on_a.flush()
    await on_b.flush()
    # Each reads only the other's hosts from the database; its own are its connections.
    assert await on_a.refresh_remote(ALIVE_WITHIN) == 1
    assert (on_a.node_of(a_host), on_a.node_of(b_host)) == ("node-a", "node-b")
    assert on_a.remote_ids() == [b_host]
    assert on_a.online_ids() == [a_host]
    assert on_a.is_online(b_host)
    assert on_a.link(b_host) is None
    # A single process names no node.
    assert Presence(engine).node_of(a_host) is None
