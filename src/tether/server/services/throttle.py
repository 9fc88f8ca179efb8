"""Login throttling (OWASP ASVS 4 V2.2.1) keyed by account and source together (ADR 0026).

Counts come from the `login_attempts` table, so the limits hold across platform processes and
restarts. A refusal names how long to wait (HTTP 429 with Retry-After); the server never sleeps
on a request, which would let an attacker tie up workers. Accounts are keyed by the name typed, so
an unknown name is throttled exactly like a real one and the answers reveal nothing.

Three limits, each of which an attacker can only spend for itself:
- the growing delay counts the failures of one account from one source address, so failing on
  purpose from elsewhere never delays the real user;
- the per-source ceiling counts one address's failures across all accounts (password spraying);
- the hourly account cap (ASVS: at most 100 failures per hour) is split into two budgets: most of
  it for addresses the account has not logged in from lately, a small share for the addresses it
  has ("known sources"). An attacker elsewhere exhausts only the first; together they never pass
  100. Which budget a failure belongs to is decided by the successes before it, so it never moves.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server.services.client_text import untrusted_text
from tether.server.store.db import as_utc
from tether.server.store.tables import login_attempts

# The stored columns' width: longer names and addresses are cut to it everywhere, consistently.
KEY_LENGTH = 64


@dataclass(frozen=True)
class ThrottlePolicy:
    # ASVS V2.2.1: no more than 100 failed attempts per hour on one account, all sources together.
    account_limit: int = 100
    account_window: timedelta = timedelta(hours=1)
    # Of the hourly cap, this many failures are kept for the account's known sources: addresses
    # that logged in to it successfully within `known_source_window` before the failure.
    known_source_share: int = 10
    known_source_window: timedelta = timedelta(days=30)
    # Consecutive failures of one account from one source allowed before delays start, then
    # 1, 2, 4, ... seconds, capped.
    free_failures: int = 5
    max_delay: timedelta = timedelta(minutes=15)
    # One address failing against many accounts (password spraying).
    address_limit: int = 100
    address_window: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        # Both budgets must let someone in: a budget of 0 would refuse its sources for good.
        if not 0 < self.known_source_share < self.account_limit:
            raise ValueError("known_source_share must lie between 0 and account_limit")

    @property
    def unknown_source_limit(self) -> int:
        return self.account_limit - self.known_source_share


@dataclass(frozen=True)
class _Attempt:
    at: datetime
    address: str
    success: bool


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def _key(text: str) -> str:
    # What a client typed: bounded and printable (PostgreSQL refuses a NUL in text outright).
    return untrusted_text(text, KEY_LENGTH)


def _known_at(address: str, at: datetime, successes: Sequence[_Attempt], window: timedelta) -> bool:
    """Whether `address` had logged in to the account within `window` before `at`."""
    return any(s.address == address and at - window <= s.at < at for s in successes)


class LoginThrottle:
    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy

    async def _attempts(
        self, conn: AsyncConnection, username: str, now: datetime
    ) -> tuple[list[_Attempt], list[_Attempt]]:
        """The account's attempts of the last hour, and its successes old enough to decide
        which of those came from known sources."""
        p = self.policy
        recent_since = now - p.account_window
        rows = (
            await conn.execute(
                select(login_attempts.c.at, login_attempts.c.address, login_attempts.c.success)
                .where(
                    login_attempts.c.username == _key(username),
                    or_(
                        login_attempts.c.at > recent_since,
                        and_(
                            login_attempts.c.success.is_(True),
                            login_attempts.c.at > recent_since - p.known_source_window,
                        ),
                    ),
                )
                .order_by(login_attempts.c.at, login_attempts.c.id)
            )
        ).all()
        attempts = [_Attempt(as_utc(r.at), r.address, bool(r.success)) for r in rows]  # type: ignore[arg-type]
        recent = [a for a in attempts if a.at > recent_since]
        return recent, [a for a in attempts if a.success]

    async def wait_needed(
        self, conn: AsyncConnection, username: str, address: str, now: datetime
    ) -> int | None:
        """Seconds the caller must wait before another attempt, or None when it may go ahead."""
        p = self.policy
        address = _key(address)
        recent, successes = await self._attempts(conn, username, now)
        waits: list[datetime] = []

        # The hourly account cap, in the budget this attempt belongs to.
        known = _known_at(address, now, successes, p.known_source_window)
        limit = p.known_source_share if known else p.unknown_source_limit
        budget = [
            a.at
            for a in recent
            if not a.success
            and _known_at(a.address, a.at, successes, p.known_source_window) == known
        ]
        if len(budget) >= limit:
            waits.append(budget[-limit] + p.account_window)

        # The growing delay: this account's run of failures from this address.
        consecutive: list[datetime] = []
        for attempt in recent:
            if attempt.address == address:
                consecutive = [] if attempt.success else [*consecutive, attempt.at]
        if len(consecutive) >= p.free_failures:
            exponent = min(len(consecutive) - p.free_failures, 30)
            delay = min(timedelta(seconds=2**exponent), p.max_delay)
            waits.append(consecutive[-1] + delay)

        # The per-source ceiling across accounts.
        spray = (
            (
                await conn.execute(
                    select(login_attempts.c.at)
                    .where(
                        login_attempts.c.address == address,
                        login_attempts.c.success.is_(False),
                        login_attempts.c.at > now - p.address_window,
                    )
                    .order_by(login_attempts.c.at.desc())
                    .limit(p.address_limit)
                )
            )
            .scalars()
            .all()
        )
        if len(spray) >= p.address_limit:
            oldest_spray = as_utc(spray[-1])
            if oldest_spray is not None:
                waits.append(oldest_spray + p.address_window)

        until = max(waits, default=None)
        if until is None or until <= now:
            return None
        return _seconds(until - now)

    async def record(
        self, conn: AsyncConnection, username: str, address: str, now: datetime, *, success: bool
    ) -> int:
        result = await conn.execute(
            insert(login_attempts).values(
                username=_key(username), address=_key(address), at=now, success=success
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def mark_success(self, conn: AsyncConnection, attempt_id: int) -> None:
        """An attempt recorded as failed up front turned out to succeed."""
        await conn.execute(
            update(login_attempts).where(login_attempts.c.id == attempt_id).values(success=True)
        )

    async def purge(self, conn: AsyncConnection, now: datetime) -> None:
        """Forget failures older than every window, and successes too old to make a source
        known for any failure still counted."""
        p = self.policy
        keep_failures = max(p.account_window, p.address_window)
        keep_successes = p.account_window + p.known_source_window
        await conn.execute(
            delete(login_attempts).where(
                or_(
                    and_(
                        login_attempts.c.success.is_(False),
                        login_attempts.c.at < now - keep_failures,
                    ),
                    login_attempts.c.at < now - keep_successes,
                )
            )
        )
