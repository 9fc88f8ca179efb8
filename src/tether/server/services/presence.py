"""Which agents are connected to this process, and when each was last heard from.

`last_seen` changes with every heartbeat of every agent; writing it each time would be one write
per agent per minute. Instead touches collect in memory and one batched UPDATE flushes them every
few seconds (DESIGN.md section 9, "persist acknowledgements in batches").
"""

import asyncio
import logging
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode, Policy
from tether.server.store.db import utcnow
from tether.server.store.tables import hosts

log = logging.getLogger(__name__)


class AgentLink(Protocol):
    """A live connection to one agent, as the gateway provides it."""

    host_id: str
    connected_at: datetime

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
    """The registry of live agent connections in this platform process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._links: dict[str, AgentLink] = {}
        self._dirty: dict[str, datetime] = {}

    def attach(self, link: AgentLink) -> AgentLink | None:
        """Register a new connection; returns the one it replaces, which the caller closes."""
        previous = self._links.get(link.host_id)
        self._links[link.host_id] = link
        self._dirty[link.host_id] = utcnow()
        return previous

    def detach(self, link: AgentLink) -> None:
        if self._links.get(link.host_id) is link:
            del self._links[link.host_id]
            self._dirty[link.host_id] = utcnow()

    def touch(self, host_id: str) -> None:
        self._dirty[host_id] = utcnow()

    def link(self, host_id: str) -> AgentLink | None:
        return self._links.get(host_id)

    def is_online(self, host_id: str) -> bool:
        return host_id in self._links

    def online_ids(self) -> list[str]:
        return list(self._links)

    @property
    def count(self) -> int:
        return len(self._links)

    def pending_last_seen(self, host_id: str) -> datetime | None:
        """A touch not yet flushed, so listings are current without waiting for the flush."""
        return self._dirty.get(host_id)

    async def flush(self) -> int:
        """Write every pending `last_seen` in one statement; returns how many hosts it covered."""
        if not self._dirty:
            return 0
        batch, self._dirty = self._dirty, {}
        statement = (
            update(hosts).where(hosts.c.id == bindparam("host")).values(last_seen=bindparam("seen"))
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    statement, [{"host": h, "seen": seen} for h, seen in batch.items()]
                )
        except Exception:
            # Keep the touches for the next attempt; newer touches win.
            for host, seen in batch.items():
                self._dirty.setdefault(host, seen)
            raise
        return len(batch)

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
