"""Refusals of unauthenticated clients, summarized per source address per minute (ADR 0026).

A failed login or a TLS handshake refused on the agent port costs an attacker nothing, so a
record for each would let anyone grow the signed audit chain without bound (500 records in 7 s
from one client, before this). Instead each source address gets a tally that opens with its
first refusal and is written as ONE record when it is a minute old: how many, which reasons, the
accounts tried (bounded) and the last client text (sanitised). The number of sources tallied at
once is bounded too; the rest share one tally, so even a flood from many addresses adds a bounded
number of records per minute.

The tallies live in memory: a process killed with -9 loses at most its last minute of counts
(the throttle's own table still holds the login attempts). A clean stop writes them all.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from tether.server.services.audit import AuditLog
from tether.server.services.client_text import untrusted_text
from tether.server.store.db import utcnow

log = logging.getLogger(__name__)

WINDOW = timedelta(minutes=1)
# Distinct sources tallied in one window; refusals from further sources share one tally.
MAX_SOURCES = 100
OTHER_SOURCES = "other sources"
# Per tally: distinct accounts named and distinct reasons kept; the rest are only counted.
MAX_ACCOUNTS = 10
MAX_REASONS = 10
OTHER_REASON = "other"
# Distinct addresses remembered for the shared tally (beyond that it says "at least").
MAX_OTHER_ADDRESSES = 10_000
# Distinct reasons counted for /metrics (each a label): callers pass a small fixed set anyway.
MAX_TOTAL_REASONS = 50
ACTOR = "unauthenticated"


@dataclass
class _Tally:
    opened: datetime
    last: datetime
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    accounts: list[str] = field(default_factory=list)
    more_accounts: int = 0
    sources: set[str] = field(default_factory=set)
    client_text: str = ""

    def add(self, reason: str, account: str | None, client_text: str, at: datetime) -> None:
        self.count += 1
        self.last = at
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] += 1
        else:
            self.reasons[OTHER_REASON] += 1
        if account is not None and account not in self.accounts:
            if len(self.accounts) < MAX_ACCOUNTS:
                self.accounts.append(account)
            else:
                self.more_accounts += 1
        if client_text:
            self.client_text = client_text


class RefusalSummary:
    """Tallies refusals per source address and writes one audit record per source per minute.

    `totals` counts every refusal by reason since the process started (for /metrics).
    """

    def __init__(
        self,
        audit: AuditLog,
        action: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._audit = audit
        self._action = action
        self._clock = clock
        self._tallies: dict[str, _Tally] = {}
        self.totals: Counter[str] = Counter()

    def note(
        self,
        address: str,
        reason: str,
        *,
        account: str | None = None,
        client_text: str = "",
    ) -> None:
        """Count one refusal from `address`; nothing is written until its tally is a minute old."""
        now = self._clock()
        address = untrusted_text(address) or "unknown"
        reason = untrusted_text(reason)
        key = address
        if key not in self._tallies and len(self._tallies) >= MAX_SOURCES:
            key = OTHER_SOURCES
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(opened=now, last=now)
        if len(tally.sources) < MAX_OTHER_ADDRESSES:
            tally.sources.add(address)
        tally.add(
            reason,
            untrusted_text(account) if account is not None else None,
            untrusted_text(client_text),
            now,
        )
        if reason in self.totals or len(self.totals) < MAX_TOTAL_REASONS:
            self.totals[reason] += 1
        else:
            self.totals[OTHER_REASON] += 1

    async def flush(self, *, everything: bool = False) -> int:
        """Write the tallies that are a minute old (or all of them); returns records written."""
        now = self._clock()
        due = [
            key
            for key, tally in self._tallies.items()
            if everything or now - tally.opened >= WINDOW
        ]
        written = 0
        for key in due:
            tally = self._tallies.pop(key)
            try:
                await self._write(key, tally)
                written += 1
            except (SQLAlchemyError, OSError):  # the database unreachable, the disk full
                log.warning(
                    "Could not audit %d refusals (%s) from %s; they are counted in /metrics only.",
                    tally.count,
                    self._action,
                    key,
                    exc_info=True,
                )
        return written

    async def _write(self, key: str, tally: _Tally) -> None:
        details: dict[str, object] = {
            "count": tally.count,
            "first": tally.opened.isoformat(),
            "last": tally.last.isoformat(),
            "reasons": dict(sorted(tally.reasons.items())),
        }
        if tally.accounts:
            details["accounts"] = tally.accounts
            details["more_accounts"] = tally.more_accounts
        if key == OTHER_SOURCES:
            details["sources"] = len(tally.sources)
            details["sources_at_least"] = len(tally.sources) >= MAX_OTHER_ADDRESSES
        source = f"{key} {tally.client_text}".strip() if key != OTHER_SOURCES else ""
        await self._audit.record(
            self._action,
            actor=ACTOR,
            target=key,
            outcome="failure",
            source=source,
            details=details,
        )

    async def run_flusher(self, interval_seconds: float) -> None:
        """Write due tallies every `interval_seconds`, forever; cancel to stop (then call
        `flush(everything=True)` to keep the last minute)."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.flush()
            except Exception:
                # Whatever went wrong with one round, the next must still run: a dead flusher
                # would let the tallies grow silently until the process stops.
                log.exception("Writing the %s summaries failed; retrying later.", self._action)
