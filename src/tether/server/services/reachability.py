"""Round trips to connected agents: the no-op action sent to many hosts at once.

This answers the responder's first question at 3 a.m. ("which of these hosts can I act on right
now?") and is the fan-out the load harness measures. It needs no job record: nothing runs on the
endpoint, so there is nothing to recover after a restart.
"""

import asyncio
import time
from dataclasses import dataclass, field

from tether.protocol import NoopArgs, action
from tether.server.errors import Unavailable
from tether.server.services.audit import AuditLog
from tether.server.services.presence import Presence

NOOP = action("system.noop")


@dataclass
class PingReport:
    asked: int
    answered: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    round_trips_ms: list[float] = field(default_factory=list)


# What an api-role process answers: round trips need the process holding the connections.
PING_ELSEWHERE = (
    "Pinging hosts needs the agent connections, which this platform process (role api) does not "
    "hold; ping through a process started with --role all."
)


class Reachability:
    def __init__(self, presence: Presence, audit: AuditLog, holds_agents: bool = True) -> None:
        self._presence = presence
        self._audit = audit
        # Round trips do not cross processes yet (docs/adr/0044): the api role says so at once.
        self._holds_agents = holds_agents

    async def ping(
        self, host_ids: list[str] | None, *, timeout: float, actor: str, source: str
    ) -> PingReport:
        """Send `system.noop` to each online host (all when `host_ids` is None) and wait."""
        if not self._holds_agents:
            raise Unavailable(PING_ELSEWHERE)
        wanted = self._presence.online_ids() if host_ids is None else host_ids
        report = PingReport(asked=len(wanted), answered=0)
        args = NoopArgs(echo="ping").model_dump()
        started = time.perf_counter()

        async def one(host_id: str) -> None:
            link = self._presence.link(host_id)
            if link is None:
                report.failed[host_id] = "offline"
                return
            sent = time.perf_counter()
            try:
                await link.call(NOOP.name, args, timeout)
            except TimeoutError:
                report.failed[host_id] = "no answer in time"
            except Exception as exc:
                report.failed[host_id] = str(exc) or type(exc).__name__
            else:
                report.answered += 1
                report.round_trips_ms.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(one(h) for h in wanted))
        report.seconds = time.perf_counter() - started
        await self._audit.record(
            "hosts.ping",
            actor=actor,
            target="all online hosts" if host_ids is None else f"{len(wanted)} hosts",
            source=source,
            details={"asked": report.asked, "answered": report.answered},
        )
        return report
