"""Which agents are connected to this process, and when each was last heard from.

`last_seen` changes with every heartbeat of every agent; writing it each time would be one write
per agent per minute. Instead touches collect in memory and one batched UPDATE flushes them every
few seconds (DESIGN.md section 9, "persist acknowledgements in batches").
"""

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode, Policy
from tether.server.store.db import utcnow
from tether.server.store.tables import hosts, platform_nodes

log = logging.getLogger(__name__)


class AgentLink(Protocol):
    """A live connection to one agent, as the gateway provides it."""

    host_id: str
    connected_at: datetime
    # The protocol version the agent said in its hello (tether.protocol.compat).
    protocol_version: int

    async def call(self, action: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run an action on the agent and return its result."""
        ...

    async def send_text(self, text: str) -> None:
        """Send one control message; a closed connection is not an error (the database still
        holds whatever it was about, and the next connection gets it)."""
        ...

    async def send_policy(self, policy: Policy) -> None:
        """Tell the agent what its segment allows; a closed connection is not an error."""
        ...

    async def disconnect(self, code: CloseCode, reason: str) -> None:
        """Close the connection with a reason the agent can show."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        ...


class Presence:
    """The registry of live agent connections in this platform process.

    In a split platform (docs/adr/0044) a gateway process is given its `node_id` and also
    flushes which node holds each host, and an api process, which holds no connection, reads
    that back (`refresh_remote`) so its listings say who is online."""

    def __init__(
        self, engine: AsyncEngine, node_id: str | None = None, *, node_name: str | None = None
    ) -> None:
        self._engine = engine
        self._node_id = node_id
        # What the hosts list shows beside this node's agents (none on a single process).
        self._node_name = node_name
        self._links: dict[str, AgentLink] = {}
        self._dirty: dict[str, datetime] = {}
        # Hosts whose holder changed since the last flush: this node, or None when it let go.
        self._holders: dict[str, str | None] = {}
        # Hosts connected to another live process, as last read, with that node's name (api
        # role, and every node of a platform of several).
        self._remote: dict[str, str] = {}

    def attach(self, link: AgentLink) -> AgentLink | None:
        """Register a new connection; returns the one it replaces, which the caller closes."""
        previous = self._links.get(link.host_id)
        self._links[link.host_id] = link
        self._dirty[link.host_id] = utcnow()
        if self._node_id is not None:
            self._holders[link.host_id] = self._node_id
        return previous

    def detach(self, link: AgentLink) -> None:
        if self._links.get(link.host_id) is link:
            del self._links[link.host_id]
            self._dirty[link.host_id] = utcnow()
            if self._node_id is not None:
                self._holders[link.host_id] = None

    def touch(self, host_id: str) -> None:
        self._dirty[host_id] = utcnow()

    def link(self, host_id: str) -> AgentLink | None:
        return self._links.get(host_id)

    def is_online(self, host_id: str) -> bool:
        """Connected here, or to another live process as last read."""
        return host_id in self._links or host_id in self._remote

    def node_of(self, host_id: str) -> str | None:
        """The name of the node holding the host's connection (None: offline, or one process)."""
        if host_id in self._links:
            return self._node_name
        return self._remote.get(host_id)

    def online_ids(self) -> list[str]:
        """The hosts connected to this process."""
        return list(self._links)

    def remote_ids(self) -> list[str]:
        """The hosts other live processes hold, as last read (without those connected here)."""
        return [h for h in self._remote if h not in self._links]

    @property
    def count(self) -> int:
        return len(self._links)

    def pending_last_seen(self, host_id: str) -> datetime | None:
        """A touch not yet flushed, so listings are current without waiting for the flush."""
        return self._dirty.get(host_id)

    async def flush(self) -> int:
        """Write every pending `last_seen` in one statement; returns how many hosts it covered."""
        if not self._dirty and not self._holders:
            return 0
        batch, self._dirty = self._dirty, {}
        holders, self._holders = self._holders, {}
        statement = (
            update(hosts).where(hosts.c.id == bindparam("host")).values(last_seen=bindparam("seen"))
        )
        try:
            async with self._engine.begin() as conn:
                if batch:
                    await conn.execute(
                        statement, [{"host": h, "seen": seen} for h, seen in batch.items()]
                    )
                await self._write_holders(conn, holders)
        except Exception:
            # Keep the touches for the next attempt; newer touches win.
            for host, seen in batch.items():
                self._dirty.setdefault(host, seen)
            for host, node in holders.items():
                self._holders.setdefault(host, node)
            raise
        return len(batch)

    async def _write_holders(self, conn: Any, holders: dict[str, str | None]) -> None:
        held = [{"host": h, "node": n} for h, n in holders.items() if n is not None]
        released = [{"host": h, "node": self._node_id} for h, n in holders.items() if n is None]
        if held:
            await conn.execute(
                update(hosts)
                .where(hosts.c.id == bindparam("host"))
                .values(node_id=bindparam("node")),
                held,
            )
        if released:
            # Only what this node still holds: the host may have moved to another node already.
            await conn.execute(
                update(hosts)
                .where(hosts.c.id == bindparam("host"), hosts.c.node_id == bindparam("node"))
                .values(node_id=None),
                released,
            )

    async def refresh_remote(self, alive_within: float) -> int:
        """Read which hosts other live processes hold; returns how many. A node that stopped
        beating (killed with -9) holds nothing any more, whatever `hosts.node_id` says."""
        since = utcnow() - timedelta(seconds=alive_within)
        others = [platform_nodes.c.heartbeat_at > since, hosts.c.revoked_at.is_(None)]
        if self._node_id is not None:
            others.append(platform_nodes.c.id != self._node_id)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(hosts.c.id, platform_nodes.c.id.label("node"), platform_nodes.c.name)
                .join(platform_nodes, platform_nodes.c.id == hosts.c.node_id)
                .where(and_(*others))
            )
            self._remote = {row.id: row.name or row.node[:8] for row in rows}
        return len(self._remote)

    async def run_remote_refresh(self, interval: float, alive_within: float) -> None:
        while True:
            try:
                await self.refresh_remote(alive_within)
            except Exception:
                log.exception("Could not read which hosts other processes hold; will retry.")
            await asyncio.sleep(interval)

    async def run_flusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception:
                log.exception("Could not persist last-seen times; will retry.")

    async def disconnect_all(self, code: CloseCode, reason: str, grace: float) -> int:
        """Close every connection with `reason`; drop those still open after `grace` seconds.

        A clean close costs a close handshake and a TLS close_notify per agent: with 10,000 agents
        on a busy core that took 17-23 s, all of it downtime before a restarted platform can
        listen again. The close frames go out first; whoever has not finished within the grace
        period is dropped, and the agent reconnects either way. Returns how many were dropped.
        """
        links = list(self._links.values())
        if not links:
            return 0
        closing = {asyncio.ensure_future(link.disconnect(code, reason)): link for link in links}
        _, late = await asyncio.wait(closing, timeout=grace)
        for task in late:
            closing[task].abort()
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in closing.keys() - late:
            if not task.cancelled() and task.exception() is not None:
                log.info("Closing %s failed: %s", closing[task].host_id, task.exception())
        return len(late)
