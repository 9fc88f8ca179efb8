"""Refusals of agents, on record without letting an agent write the record.

Every refusal of an identified host is worth knowing, but a compromised endpoint can reconnect
and be refused hundreds of times a second: each refusal as its own audit record would let it fill
the chain, the database and the Session History. So a host's first refusals in a minute are
recorded one by one (what an honest fault produces), and the rest of that minute are counted and
written as one summary with the counts by kind when the minute ends.

Unauthenticated refusals (logins, TLS handshakes) are summarized per source address by
`services/refusal_summary.py`, with no record one by one: nobody is known there. Here the host is
known by its certificate, and its first refusals are worth a record each.

A host that overspent its budget is also sent away for a while (`Penalties`): its reconnects are
refused before any database work, by certificate serial.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tether.server.services.audit import AuditLog
from tether.server.store.db import utcnow

log = logging.getLogger(__name__)

# Refusals of one host recorded one by one per window; honest faults (a bad build, a clock that
# is off) stay well under it.
INDIVIDUAL_PER_WINDOW = 10
WINDOW_SECONDS = 60.0


@dataclass
class _Window:
    opened: float
    source: str
    recorded: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    last_reason: str = ""
    first_counted: str = ""
    last_counted: str = ""


class RefusalRecords:
    """Writes refusals of hosts to the audit log, summarizing past a few per host a minute."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        window_seconds: float = WINDOW_SECONDS,
        individual: int = INDIVIDUAL_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._window_seconds = window_seconds
        self._individual = individual
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def refuse(
        self, target: str, *, source: str, kind: str, reason: str, details: dict[str, Any]
    ) -> None:
        """Put one refusal on record, or count it in the host's summary for this minute.

        Never raises: a record that cannot be written is logged, and the refusal stands.
        """
        now = self._clock()
        window = self._windows.get(target)
        if window is not None and now - window.opened >= self._window_seconds:
            await self._summarize(target, self._windows.pop(target))
            window = None
        if window is None:
            window = self._windows[target] = _Window(opened=now, source=source)
        if window.recorded < self._individual:
            window.recorded += 1
            await self._write(target, source, {"reason": reason, **details})
            return
        stamp = utcnow().isoformat()
        window.counts[kind] += 1
        window.last_reason = reason
        window.source = source
        window.first_counted = window.first_counted or stamp
        window.last_counted = stamp

    async def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of the windows that ended (all of them with `everything`)."""
        now = self._clock()
        for target, window in list(self._windows.items()):
            if everything or now - window.opened >= self._window_seconds:
                del self._windows[target]
                await self._summarize(target, window)

    async def run(self) -> None:
        """Write each summary shortly after its minute ends; until cancelled."""
        while True:
            await asyncio.sleep(self._window_seconds / 6)
            await self.flush()

    async def _summarize(self, target: str, window: _Window) -> None:
        total = sum(window.counts.values())
        if total == 0:
            return
        await self._write(
            target,
            window.source,
            {
                "reason": (
                    f"{total} more refusals of this host within a minute were counted, "
                    "not recorded one by one."
                ),
                # The fields of the unauthenticated refusals' summary (services/refusal_summary.py),
                # so one query reads both.
                "summary": True,
                "count": total,
                "reasons": dict(sorted(window.counts.items())),
                "last_reason": window.last_reason,
                "first": window.first_counted,
                "last": window.last_counted,
            },
        )

    async def _write(self, target: str, source: str, details: dict[str, Any]) -> None:
        try:
            await self._audit.record(
                "agent.connect",
                actor="endpoint",
                target=target,
                outcome="failure",
                source=source,
                details=details,
            )
        except Exception:
            log.exception("Could not record the refusal of %s", target)


# How long a reconnect during the penalty is held, unread, before its refusal is sent, and how
# many of one host are held at once. A hostile endpoint that reconnects at once after every close
# would otherwise make the platform do a TLS handshake per round trip, as fast as it can; held,
# a client that waits for its answer (like a naive flood loop) tries once every few seconds.
HOLD_SECONDS = 5.0
HELD_PER_HOST = 2


class Penalties:
    """Certificate serials sent away for a while, and until when."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, tuple[float, str]] = {}
        self._held: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def hold(self, serial: str) -> AsyncIterator[None]:
        """Wait up to HOLD_SECONDS before a refusal, unless HELD_PER_HOST are waiting already
        (then at once: holding costs a connection's memory)."""
        if self._held[serial] >= HELD_PER_HOST:
            yield
            return
        self._held[serial] += 1
        try:
            await asyncio.sleep(HOLD_SECONDS)
            yield
        finally:
            self._held[serial] -= 1
            if not self._held[serial]:
                del self._held[serial]

    def impose(self, serial: str, host_id: str, seconds: float) -> None:
        now = self._clock()
        # Expired entries go first, so the table holds only hosts refused right now.
        for expired in [s for s, (until, _) in self._until.items() if until <= now]:
            del self._until[expired]
        self._until[serial] = (now + seconds, host_id)

    def remaining(self, serial: str) -> tuple[int, str] | None:
        """Whole seconds until `serial` may connect again and its host; None when it may now."""
        entry = self._until.get(serial)
        if entry is None:
            return None
        left = entry[0] - self._clock()
        if left <= 0:
            with contextlib.suppress(KeyError):
                del self._until[serial]
            return None
        return max(1, round(left)), entry[1]
