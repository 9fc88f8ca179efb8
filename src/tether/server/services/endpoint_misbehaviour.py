"""What an endpoint claims about what is not its own, put on record in summary.

An agent is identified by its certificate; whatever it names in a message (a job, a transfer)
is only its word. When it names another host's job, the platform refuses and says so in the
audit log, but a compromised endpoint can send such messages as fast as its pacing allows, so
one record per message would let it flood the chain. Each host gets at most one record when a
minute begins (the first refusal, at once, so it is seen) and one summary when that minute is
over (how many of each kind followed), however many it sends (docs/adr/0035).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tether.protocol.text import safe_text
from tether.server.services.audit import AuditLog
from tether.server.store.db import utcnow

log = logging.getLogger(__name__)

ACTION = "endpoint.misbehaviour"
# The kinds of claim that are counted; each names what the endpoint tried. Another service that
# refuses an authenticated endpoint's message adds its kind here (a fixed list keeps the counts
# in a record bounded). Unauthenticated refusals are summarized by source address instead
# (services/refusal_summary.py).
JOB_STATUS = "job.status for a job not its own"
JOB_OUTPUT = "job.output for a job not its own"
TRANSFER_REQUEST = "transfer.request for a job not its own script"
ISOLATION_REPORT = "isolation.report naming a job not its own script"
KINDS = (JOB_STATUS, JOB_OUTPUT, TRANSFER_REQUEST, ISOLATION_REPORT)

# What a record quotes of an endpoint's own words (a job id is at most 64 characters).
_QUOTED = 64


@dataclass
class _Window:
    since: datetime
    counts: dict[str, int] = field(default_factory=dict)
    # What was already on record: the first claim, said at once.
    recorded: int = 1


class EndpointMisbehaviour:
    """Counts claims an endpoint made about what is not its own; records them in summary."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        window_seconds: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._audit = audit
        self._window = window_seconds
        self._clock = clock
        self._open: dict[str, _Window] = {}
        self._closing: dict[str, asyncio.TimerHandle] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def note(self, host_id: str, kind: str, named: str = "") -> None:
        """Host `host_id`'s agent sent a message of `kind` (one of KINDS), naming `named` (the
        job it claimed, say), which the caller refused: counted here, recorded in summary."""
        if kind not in KINDS:
            raise ValueError(f"Unknown kind of endpoint misbehaviour: {kind!r}")
        window = self._open.get(host_id)
        if window is not None:
            window.counts[kind] = window.counts.get(kind, 0) + 1
            return
        now = self._clock()
        self._open[host_id] = _Window(since=now, counts={kind: 1})
        self._closing[host_id] = asyncio.get_running_loop().call_later(
            self._window, self._close_later, host_id
        )
        quoted = safe_text(named, _QUOTED)
        log.warning("Host %s sent %s (%s); refused", host_id, kind, quoted)
        await self._record(
            host_id,
            {
                "counts": {kind: 1},
                "first": {"kind": kind, "named": quoted},
                "since": now.isoformat(),
                "window_seconds": self._window,
            },
        )

    def _close_later(self, host_id: str) -> None:
        task = asyncio.create_task(self.close_window(host_id))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def close_window(self, host_id: str) -> None:
        """End the host's current minute: one summary record if more followed its first."""
        handle = self._closing.pop(host_id, None)
        if handle is not None:
            handle.cancel()
        window = self._open.pop(host_id, None)
        if window is None:
            return
        total = sum(window.counts.values())
        if total <= window.recorded:
            return
        await self._record(
            host_id,
            {
                "counts": dict(sorted(window.counts.items())),
                "since": window.since.isoformat(),
                "until": self._clock().isoformat(),
                "window_seconds": self._window,
                "summary": True,
            },
        )

    async def close(self) -> None:
        """Write the summaries still open (the platform is stopping)."""
        for host_id in list(self._open):
            await self.close_window(host_id)
        for task in list(self._flushes):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _record(self, host_id: str, details: dict[str, Any]) -> None:
        try:
            await self._audit.record(
                ACTION,
                actor="endpoint",
                target=f"host:{host_id}",
                outcome="failure",
                source="endpoint",
                details=details,
            )
        except Exception:
            # The refusal stands either way; a chain that cannot be written is said elsewhere.
            log.exception("Could not record the misbehaviour of host %s", host_id)
