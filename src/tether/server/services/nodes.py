"""The platform processes of a split platform, each beating in the database (docs/adr/0044).

A gateway that stops beating (killed, or cut off from the database) has its hosts shown offline
by the others after `ALIVE_WITHIN` seconds: `hosts.node_id` alone cannot say so, since a node
killed with -9 clears nothing.
"""

import asyncio
import logging
import uuid

from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.store.db import utcnow
from tether.server.store.tables import hosts, platform_nodes

log = logging.getLogger(__name__)

# How often a node beats, and how long after its last beat it still counts as alive.
BEAT_SECONDS = 3.0
ALIVE_WITHIN = 10.0


class Nodes:
    """This process's row in `platform_nodes`."""

    def __init__(self, engine: AsyncEngine, role: str, node_id: str | None = None) -> None:
        self._engine = engine
        self.role = role
        self.id = node_id or str(uuid.uuid4())

    async def join(self) -> None:
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(platform_nodes).values(
                    id=self.id, role=self.role, started_at=now, heartbeat_at=now
                )
            )

    async def beat(self) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(platform_nodes)
                .where(platform_nodes.c.id == self.id)
                .values(heartbeat_at=utcnow())
            )

    async def run(self, interval: float = BEAT_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.beat()
            except Exception:
                log.exception("Could not record this node's heartbeat; will retry.")

    async def leave(self) -> None:
        """At a clean stop: this node holds no host any more, and its row goes."""
        async with self._engine.begin() as conn:
            await conn.execute(update(hosts).where(hosts.c.node_id == self.id).values(node_id=None))
            await conn.execute(delete(platform_nodes).where(platform_nodes.c.id == self.id))
