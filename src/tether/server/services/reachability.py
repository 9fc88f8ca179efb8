"""Round trips to connected agents: the no-op action sent to many hosts at once.

In a split platform (docs/adr/0044) the api process asks the gateways over the bus, each answers
for the hosts it holds, and what no gateway answered in time reads "no answer in time".

This answers the responder's first question at 3 a.m. ("which of these hosts can I act on right
now?") and is the fan-out the load harness measures. It needs no job record: nothing runs on the
endpoint, so there is nothing to recover after a restart.
"""

import asyncio
import time
from dataclasses import dataclass, field

from tether.protocol import NoopArgs, action
from tether.protocol.action_names import SYSTEM_NOOP
from tether.server.services.audit import AuditLog
from tether.server.services.bus import Bus, Topic
from tether.server.services.presence import Presence

NOOP = action(SYSTEM_NOOP)


@dataclass
class PingReport:
    asked: int
    answered: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    round_trips_ms: list[float] = field(default_factory=list)
    # Each answering host's round trip, by host id.
    round_trip_ms_by_host: dict[str, float] = field(default_factory=dict)


# How much longer than the round trips' own limit an api process waits for the gateways' answers.
_ANSWER_GRACE = 1.0


class Reachability:
    def __init__(
        self,
        presence: Presence,
        audit: AuditLog,
        holds_agents: bool = True,
        bus: Bus | None = None,
    ) -> None:
        self._presence = presence
        self._audit = audit
        # An api process holds no connection: it asks the gateways over the bus (ADR 0044).
        self._holds_agents = holds_agents
        self._bus = bus

    def serve_agents(self, bus: Bus) -> None:
        """Answer other processes' pings for the hosts connected here."""
        bus.respond(Topic.PING, self.ping_here)

    async def ping(
        self, host_ids: list[str] | None, *, timeout: float, actor: str, source: str
    ) -> PingReport:
        """Send `system.noop` to each online host (all when `host_ids` is None) and wait."""
        if host_ids is None:
            wanted = self._presence.remote_ids()
            if self._holds_agents:
                wanted = self._presence.online_ids() + wanted
        else:
            wanted = host_ids
        report = PingReport(asked=len(wanted), answered=0)
        started = time.perf_counter()
        if self._bus is None or not self._bus.spans_processes:
            outcomes = await self._round_trips(wanted, timeout)
        else:
            # Those connected here directly, the others through the node holding them (one of
            # several nodes, docs/adr/0050; an api process holds none).
            here = [h for h in wanted if self._presence.link(h) is not None]
            elsewhere = [h for h in wanted if self._presence.link(h) is None]
            near, far = await asyncio.gather(
                self._round_trips(here, timeout),
                self._round_trips_elsewhere(self._bus, elsewhere, timeout),
            )
            outcomes = {**far, **near}
        for host_id in wanted:
            outcome = outcomes.get(host_id, "no answer in time")
            if isinstance(outcome, float):
                report.answered += 1
                report.round_trips_ms.append(outcome)
                report.round_trip_ms_by_host[host_id] = outcome
            else:
                report.failed[host_id] = outcome
        report.seconds = time.perf_counter() - started
        await self._audit.record(
            "hosts.ping",
            actor=actor,
            target="all online hosts" if host_ids is None else f"{len(wanted)} hosts",
            source=source,
            details={"asked": report.asked, "answered": report.answered},
        )
        return report

    async def _round_trips(self, host_ids: list[str], timeout: float) -> dict[str, float | str]:
        """Each host's round trip in ms, or why there was none, over the connections here."""
        args = NoopArgs(echo="ping").model_dump()
        outcomes: dict[str, float | str] = {}

        async def one(host_id: str) -> None:
            link = self._presence.link(host_id)
            if link is None:
                outcomes[host_id] = "offline"
                return
            sent = time.perf_counter()
            try:
                await link.call(NOOP.name, args, timeout)
            except TimeoutError:
                outcomes[host_id] = "no answer in time"
            except Exception as exc:
                outcomes[host_id] = str(exc) or type(exc).__name__
            else:
                outcomes[host_id] = (time.perf_counter() - sent) * 1000

        await asyncio.gather(*(one(h) for h in host_ids))
        return outcomes

    async def _round_trips_elsewhere(
        self, bus: Bus, host_ids: list[str], timeout: float
    ) -> dict[str, float | str]:
        """The round trips of hosts other processes hold, asked over the bus."""
        outcomes: dict[str, float | str] = {
            h: "offline" for h in host_ids if not self._presence.is_online(h)
        }
        online = [h for h in host_ids if h not in outcomes]
        if not online:
            return outcomes
        answered: dict[str, float | str] = {}

        def enough(lines: list[str]) -> bool:
            answered.update(_parse(lines))
            return all(h in answered for h in online)

        await bus.ask(
            Topic.PING, [repr(timeout), *online], timeout=timeout + _ANSWER_GRACE, enough=enough
        )
        enough([])
        outcomes.update({h: answered[h] for h in online if h in answered})
        return outcomes

    async def ping_here(self, request: tuple[str, ...]) -> list[str]:
        """Another process's ping: round trips for the hosts of `request` held here."""
        if not request:
            return []
        try:
            timeout = float(request[0])
        except ValueError:
            return []
        held = [h for h in request[1:] if self._presence.link(h) is not None]
        if not held:
            return []
        outcomes = await self._round_trips(held, min(max(timeout, 0.1), 60.0))
        return [
            f"{h}\t{o!r}" if isinstance(o, float) else f"{h}\t\t{o}" for h, o in outcomes.items()
        ]


def _parse(lines: list[str]) -> dict[str, float | str]:
    """The outcomes in `ping_here`'s lines: milliseconds, or the reason there were none."""
    outcomes: dict[str, float | str] = {}
    for line in lines:
        host_id, _, rest = line.partition("\t")
        ms, _, reason = rest.partition("\t")
        if reason:
            outcomes[host_id] = reason
        else:
            try:
                outcomes[host_id] = float(ms)
            except ValueError:
                continue
    return outcomes
