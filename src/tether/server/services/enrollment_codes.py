"""One-time enrollment codes: the only way someone without a second factor can enroll one.

A password alone must never let anyone set up the second factor of an account that needs one
(whoever logged in first would own it). An admin issues a code out of band (`tether user
enrollment-code NAME`, resetting a factor issues one too), or the operator does on the platform
host (`tether server enrollment-code`); it is shown once, bound to one user, expires, and is
accepted once. Issuing, using and every failed use are audited (docs/adr/0034).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server.auth.enrollment_code import enrollment_code_hash, new_enrollment_code
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.audit import AuditLog
from tether.server.store.db import as_utc
from tether.server.store.tables import enrollment_codes, users

DEFAULT_LIFETIME = timedelta(hours=24)
MAX_LIFETIME = timedelta(days=7)
CODE_NEEDED = (
    "Enrolling a second factor needs an enrollment code from an admin: ask one to run "
    "'tether user enrollment-code {username}', then enroll with that code."
)
CODE_REFUSED = (
    "That enrollment code is wrong, used or expired; ask an admin for a new one "
    "('tether user enrollment-code {username}')."
)
NOT_FOR_YOURSELF = (
    "You cannot issue an enrollment code for your own account; ask another admin "
    "(or run 'tether server enrollment-code' on the platform host)."
)


@dataclass(frozen=True)
class IssuedCode:
    username: str
    code: str
    expires_at: datetime


class EnrollmentCodes:
    def __init__(self, engine: AsyncEngine, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock

    async def issue(
        self,
        username: str,
        *,
        actor: str,
        actor_username: str | None,
        source: str,
        lifetime: timedelta = DEFAULT_LIFETIME,
        replacing_factor: bool = False,
    ) -> IssuedCode:
        """A new code for `username` (earlier unused ones stop working). `actor_username` is
        the issuing account (None for the platform host's break-glass command), which may not
        be `username`. Refuses an account that has a factor unless `replacing_factor`."""
        if actor_username == username:
            await self._audit.record(
                "mfa.enrollment_code.issue",
                actor=actor,
                target=username,
                outcome="failure",
                source=source,
                details={"reason": "own account"},
            )
            raise Forbidden(NOT_FOR_YOURSELF)
        if not timedelta(minutes=5) <= lifetime <= MAX_LIFETIME:
            raise Invalid("An enrollment code lives between 5 minutes and 7 days.")
        now = self._clock()
        code = new_enrollment_code()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(users.c.id, users.c.mfa_secret).where(users.c.username == username)
                )
            ).first()
            if row is None:
                raise NotFound(f"There is no user named {username!r}.")
            if row.mfa_secret is not None and not replacing_factor:
                raise Conflict(
                    f"{username!r} already has a second factor; reset it with "
                    f"'tether user reset-mfa {username}' to issue a new enrollment code."
                )
            await self._retire(conn, int(row.id), now)
            await conn.execute(
                enrollment_codes.insert().values(
                    user_id=int(row.id),
                    code_hash=enrollment_code_hash(code),
                    issued_by=actor[:128],
                    issued_at=now,
                    expires_at=now + lifetime,
                )
            )
        await self._audit.record(
            "mfa.enrollment_code.issue",
            actor=actor,
            target=username,
            source=source,
            details={"expires_at": (now + lifetime).isoformat()},
        )
        return IssuedCode(username=username, code=code, expires_at=now + lifetime)

    async def _retire(self, conn: AsyncConnection, user_id: int, now: datetime) -> None:
        """Earlier unused codes of the user stop working: only the newest one is out there."""
        await conn.execute(
            update(enrollment_codes)
            .where(enrollment_codes.c.user_id == user_id, enrollment_codes.c.used_at.is_(None))
            .values(used_at=now)
        )

    async def retire_all(self, user_id: int) -> None:
        async with self._engine.begin() as conn:
            await self._retire(conn, user_id, self._clock())

    async def redeem(
        self, user_id: int, username: str, code: str | None, *, actor: str, source: str
    ) -> None:
        """Accept `code` once for `user_id`; raises Forbidden (audited) when there is none, or
        when it is wrong, used, expired or someone else's."""
        if not code or not code.strip():
            await self._audit.record(
                "mfa.enrollment_code.use",
                actor=actor,
                outcome="failure",
                source=source,
                details={"reason": "no code"},
            )
            raise Forbidden(CODE_NEEDED.format(username=username))
        now = self._clock()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(enrollment_codes.c.id, enrollment_codes.c.expires_at).where(
                        enrollment_codes.c.user_id == user_id,
                        enrollment_codes.c.code_hash == enrollment_code_hash(code),
                        enrollment_codes.c.used_at.is_(None),
                    )
                )
            ).first()
            expires = as_utc(row.expires_at) if row is not None else None
            taken = 0
            if row is not None and expires is not None and now < expires:
                # Conditional: two requests racing with one code cannot both take it.
                result = await conn.execute(
                    update(enrollment_codes)
                    .where(enrollment_codes.c.id == row.id, enrollment_codes.c.used_at.is_(None))
                    .values(used_at=now)
                )
                taken = result.rowcount
        if taken != 1:
            expired = expires is not None and now >= expires
            reason = "expired" if expired else "wrong or used"
            await self._audit.record(
                "mfa.enrollment_code.use",
                actor=actor,
                outcome="failure",
                source=source,
                details={"reason": reason},
            )
            raise Forbidden(CODE_REFUSED.format(username=username))
        await self._audit.record("mfa.enrollment_code.use", actor=actor, source=source)
