"""Login throttling (OWASP ASVS 4 V2.2.1): per account and per source address.

Counts come from the `login_attempts` table, so the limits hold across platform processes and
restarts. A refusal names how long to wait (HTTP 429 with Retry-After); the server never sleeps
on a request, which would let an attacker tie up workers. Accounts are keyed by the name typed, so
an unknown name is throttled exactly like a real one and the answers reveal nothing.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server.store.db import as_utc
from tether.server.store.tables import login_attempts


@dataclass(frozen=True)
class ThrottlePolicy:
    # ASVS V2.2.1: no more than 100 failed attempts per hour on one account.
    account_limit: int = 100
    account_window: timedelta = timedelta(hours=1)
    # Consecutive failures allowed before delays start, then 1, 2, 4, ... seconds, capped.
    free_failures: int = 5
    max_delay: timedelta = timedelta(minutes=15)
    # One address failing against many accounts (password spraying).
    address_limit: int = 100
    address_window: timedelta = timedelta(minutes=15)


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


class LoginThrottle:
    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy

    async def wait_needed(
        self, conn: AsyncConnection, username: str, address: str, now: datetime
    ) -> int | None:
        """Seconds the caller must wait before another attempt, or None when it may go ahead."""
        p = self.policy
        rows = (
            await conn.execute(
                select(login_attempts.c.at, login_attempts.c.success)
                .where(
                    login_attempts.c.username == username[:64],
                    login_attempts.c.at > now - p.account_window,
                )
                .order_by(login_attempts.c.at, login_attempts.c.id)
            )
        ).all()
        failures = [as_utc(r.at) for r in rows if not r.success]
        waits: list[datetime] = []
        if len(failures) >= p.account_limit:
            oldest = failures[-p.account_limit]
            assert oldest is not None
            waits.append(oldest + p.account_window)
        consecutive: list[datetime] = []
        for row in rows:
            consecutive = [] if row.success else [*consecutive, as_utc(row.at)]  # type: ignore[list-item]
        if len(consecutive) >= p.free_failures:
            exponent = min(len(consecutive) - p.free_failures, 30)
            delay = min(timedelta(seconds=2**exponent), p.max_delay)
            waits.append(consecutive[-1] + delay)
        spray = (
            (
                await conn.execute(
                    select(login_attempts.c.at)
                    .where(
                        login_attempts.c.address == address[:64],
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
            assert oldest_spray is not None
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
                username=username[:64], address=address[:64], at=now, success=success
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def mark_success(self, conn: AsyncConnection, attempt_id: int) -> None:
        """An attempt recorded as failed up front turned out to succeed."""
        await conn.execute(
            update(login_attempts).where(login_attempts.c.id == attempt_id).values(success=True)
        )

    async def purge(self, conn: AsyncConnection, now: datetime) -> None:
        """Forget attempts older than every window."""
        keep = max(self.policy.account_window, self.policy.address_window)
        await conn.execute(delete(login_attempts).where(login_attempts.c.at < now - keep))
