"""Telling connected agents what their segment allows (and the isolation allowlist): after
welcome and whenever it changes.

Every delivery reads the host's segment and switch from the database and sends the answer while
holding that connection's lock. So, per connection, each policy sent was read after the one sent
before it, and a change committed before a delivery started is in that delivery: whatever order
concurrent changes and reconnects happen in, the last policy an agent receives is the current one.
Reads from many deliveries at once (a switch flipped on a segment of 10,000 hosts, a reconnect
storm) are one batched statement.

A change is announced on the bus (`changed`, `changed_everywhere`, `changed_in_segment`), and
the process holding each agent's connection delivers it (`deliver_here`): the same process in
`--role all`, the gateway in a split platform (docs/adr/0044).
"""

import asyncio
import logging
import weakref
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode, Policy
from tether.server.services.batching import Coalesced
from tether.server.services.bus import Bus, Topic
from tether.server.services.buses.local import LocalBus
from tether.server.services.isolation_allowlist import read_allowlist
from tether.server.services.presence import AgentLink, Presence
from tether.server.store.tables import hosts, segments

log = logging.getLogger(__name__)

# Host ids read in one statement at most.
_READ_CHUNK = 500


class PolicyDelivery:
    """Sends each connected agent the Active Response switch of its segment."""

    def __init__(
        self,
        engine: AsyncEngine,
        presence: Presence,
        send_timeout: float = 5.0,
        bus: Bus | None = None,
    ) -> None:
        self._engine = engine
        if bus is None:
            bus = LocalBus()
            self.serve_agents(bus)
        self._bus = bus
        self._presence = presence
        self._send_timeout = send_timeout
        self._locks: weakref.WeakKeyDictionary[AgentLink, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._reads: Coalesced[None, dict[str, Policy]] = Coalesced(self._read_policies)
        # The last policy sent over each connection, so the catch-up sweep sends only a change
        # whose wake-up never arrived (docs/adr/0050).
        self._sent: weakref.WeakKeyDictionary[AgentLink, Policy] = weakref.WeakKeyDictionary()

    def serve_agents(self, bus: Bus) -> None:
        """Deliver the policy changes `bus` announces to the agents connected here."""
        bus.subscribe(Topic.POLICY_CHANGED, self.deliver_here)

    async def changed(self, host_ids: list[str]) -> None:
        """The policy of `host_ids` changed: have it delivered wherever they are connected."""
        if host_ids:
            await self._bus.publish(Topic.POLICY_CHANGED, host_ids)

    async def changed_everywhere(self) -> None:
        """Every host's policy changed (the isolation allowlist)."""
        await self._bus.publish(Topic.POLICY_CHANGED, [])

    async def changed_in_segment(self, segment_id: int) -> None:
        """The policy of every host of the segment changed."""
        await self.changed(await self._segment_hosts(segment_id))

    async def deliver_here(self, host_ids: Sequence[str]) -> None:
        """Deliver the current policy to those of `host_ids` connected here (no ids: all)."""
        if host_ids:
            await self.publish_to_hosts(list(host_ids))
        else:
            await self.publish_to_all()

    async def policy_of(self, host_id: str) -> Policy | None:
        """The policy host `host_id` is under now, or None when no such host exists."""
        return (await self._reads.submit(host_id, None)).get(host_id)

    async def _read_policies(self, batch: dict[str, None]) -> dict[str, Policy]:
        wanted = list(batch)
        found: dict[str, Policy] = {}
        async with self._engine.connect() as conn:
            allow = tuple(await read_allowlist(conn))
            for start in range(0, len(wanted), _READ_CHUNK):
                rows = await conn.execute(
                    select(hosts.c.id, segments.c.name, segments.c.active_response)
                    .join(segments, segments.c.id == hosts.c.segment_id)
                    .where(hosts.c.id.in_(wanted[start : start + _READ_CHUNK]))
                )
                for row in rows:
                    found[row.id] = Policy(
                        segment=row.name,
                        active_response=bool(row.active_response),
                        isolation_allow=allow,
                    )
        return found

    async def deliver(self, link: AgentLink) -> None:
        """Read the host's policy now and send it over `link`."""
        lock = self._locks.setdefault(link, asyncio.Lock())
        async with lock:
            policy = await self.policy_of(link.host_id)
            if policy is None:
                return
            try:
                async with asyncio.timeout(self._send_timeout):
                    await link.send_policy(policy)
                self._sent[link] = policy
            except TimeoutError:
                # An agent that cannot take a small frame may be holding a stale switch: make it
                # reconnect, which delivers the current one.
                log.warning("Policy for host %s not delivered in time; closing", link.host_id)
                await link.disconnect(
                    CloseCode.IDLE, "The policy could not be delivered; reconnect."
                )

    async def publish_to_hosts(self, host_ids: list[str]) -> int:
        """Deliver the current policy to those of `host_ids` connected here; returns how many."""
        links = [link for h in host_ids if (link := self._presence.link(h)) is not None]
        results = await asyncio.gather(
            *(self.deliver(link) for link in links), return_exceptions=True
        )
        for link, result in zip(links, results, strict=True):
            if isinstance(result, Exception):
                log.warning("Policy for host %s not delivered: %s", link.host_id, result)
        return len(links)

    async def publish_to_all(self) -> int:
        """Deliver the current policy to every host connected here."""
        return await self.publish_to_hosts(self._presence.online_ids())

    async def catch_up(self) -> int:
        """Deliver the policy to the hosts connected here whose last delivered one is not the
        current one: a change whose wake-up was lost reaches them within a sweep period, and an
        unchanged policy costs one batched read and no message. Returns how many were sent."""
        links = [link for h in self._presence.online_ids() if (link := self._presence.link(h))]
        if not links:
            return 0
        current = await self._read_policies(dict.fromkeys(link.host_id for link in links))
        stale = [
            link
            for link in links
            if link.host_id in current and self._sent.get(link) != current[link.host_id]
        ]
        if stale:
            await self.publish_to_hosts([link.host_id for link in stale])
        return len(stale)

    async def publish_everywhere(self) -> None:
        """`publish_to_all`, for a caller that wants no count (a bus resync)."""
        await self.publish_to_all()

    async def publish_to_segment(self, segment_id: int) -> int:
        """Deliver the current policy to every connected host of the segment."""
        return await self.publish_to_hosts(await self._segment_hosts(segment_id))

    async def _segment_hosts(self, segment_id: int) -> list[str]:
        async with self._engine.connect() as conn:
            return list(
                (await conn.execute(select(hosts.c.id).where(hosts.c.segment_id == segment_id)))
                .scalars()
                .all()
            )
