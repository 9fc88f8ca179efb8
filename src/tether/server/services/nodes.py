"""The processes of a platform of several, each beating in the database (docs/adr/0044, 0050).

A gateway that stops beating (killed, or cut off from the database) has its hosts shown offline
by the others after `ALIVE_WITHIN` seconds: `hosts.node_id` alone cannot say so, since a node
killed with -9 clears nothing.
"""

import asyncio
import logging
import uuid
from datetime import timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.store.db import utcnow
from tether.server.store.tables import hosts, platform_nodes

log = logging.getLogger(__name__)

# How often a node beats, and how long after its last beat it still counts as alive.
BEAT_SECONDS = 3.0
ALIVE_WITHIN = 10.0


class Nodes:
    """This process's row in `platform_nodes`."""

    def __init__(
        self,
        engine: AsyncEngine,
        role: str,
        node_id: str | None = None,
        *,
        name: str | None = None,
        file_store: str | None = None,
    ) -> None:
        self._engine = engine
        self.role = role
        self.id = node_id or str(uuid.uuid4())
        self.name = name or self.id[:8]
        # The id of the file store this node writes to (store-id in its directory).
        self.file_store = file_store

    async def join(self) -> list[str]:
        """Record this node; returns the names of live nodes whose file store is another one
        (files they retrieve cannot be read here, docs/adr/0050)."""
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(platform_nodes).values(
                    id=self.id,
                    role=self.role,
                    started_at=now,
                    heartbeat_at=now,
                    name=self.name,
                    file_store=self.file_store,
                )
            )
            if self.file_store is None:
                return []
            since = now - timedelta(seconds=ALIVE_WITHIN)
            rows = await conn.execute(
                select(platform_nodes.c.name, platform_nodes.c.id).where(
                    platform_nodes.c.heartbeat_at > since,
                    platform_nodes.c.file_store.is_not(None),
                    platform_nodes.c.file_store != self.file_store,
                )
            )
            return [row.name or row.id[:8] for row in rows]

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
