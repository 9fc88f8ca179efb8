"""Step-up: sensitive changes ask for a fresh second-factor code.

Granting or removing roles, resetting a factor, issuing enrollment codes, switching a segment's
Active Response on, creating enrollment tokens or external users and changing the access settings
need a session whose last second-factor check is at most five minutes old; otherwise the request
must carry a fresh TOTP code, which then renews the check. A session left open on an unattended
screen cannot hand out access. Every step-up, passed or failed, is audited (docs/adr/0034).
"""

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.step_up import STEP_UP_WINDOW_SECONDS
from tether.server.errors import Forbidden, StepUpRequired
from tether.server.services.audit import AuditLog
from tether.server.services.mfa import CodeCheck, Mfa
from tether.server.services.users import CODE_REFUSED, CODE_REPLAYED, User
from tether.server.store.tables import sessions

WINDOW = timedelta(seconds=STEP_UP_WINDOW_SECONDS)
# Wrong step-up codes a session may send before it is ended: a stolen session must not be able
# to guess its way to a code.
MAX_WRONG_CODES = 5
FRESH_CODE_NEEDED = (
    "This change needs a fresh second-factor code: your last one was more than 5 minutes ago; "
    "send the code your authenticator app shows now (CLI: --code, web: the code field, "
    "API: the X-Tether-Code header)."
)
TOO_MANY = "Too many wrong codes: this session has ended; log in again."


class StepUp:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        mfa: Mfa,
        clock: Callable[[], datetime],
        on_change: Callable[[int], Awaitable[None]],
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._mfa = mfa
        self._clock = clock
        # Told the user id when a session's step-up changed: authentication's cache forgets it.
        self._on_change = on_change

    def is_fresh(self, user: User) -> bool:
        checked = user.mfa_verified_at
        return user.mfa_verified and checked is not None and self._clock() - checked <= WINDOW

    async def require_fresh(self, user: User, code: str | None, *, what: str, source: str) -> None:
        """Return when `user`'s session passed its second factor within the window, or when
        `code` is a valid new TOTP code (the session's check is renewed); raise StepUpRequired
        or Forbidden otherwise. `what` names the change, for the audit log."""
        if self.is_fresh(user):
            return
        code = (code or "").strip()
        if not code:
            await self._record(user, what, source, "no fresh code")
            raise StepUpRequired(FRESH_CODE_NEEDED)
        check = await self._mfa.check_code(user.id, code)
        now = self._clock()
        if check is not CodeCheck.OK:
            ended = await self._count_wrong(user, now)
            await self._record(user, what, source, check.value)
            if ended:
                raise Forbidden(TOO_MANY)
            raise StepUpRequired(CODE_REPLAYED if check is CodeCheck.REPLAY else CODE_REFUSED)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == user.session_hash)
                .values(mfa_verified_at=now, failed_codes=0)
            )
        await self._changed(user)
        await self._audit.record(
            "auth.step_up", actor=user.actor, source=source, details={"for": what}
        )

    async def _count_wrong(self, user: User, now: datetime) -> bool:
        """Count a wrong code against the session; True when that ended it."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == user.session_hash)
                .values(failed_codes=sessions.c.failed_codes + 1)
            )
            ended = await conn.execute(
                update(sessions)
                .where(
                    sessions.c.token_hash == user.session_hash,
                    sessions.c.failed_codes >= MAX_WRONG_CODES,
                    sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
        if ended.rowcount:
            await self._changed(user)
        return bool(ended.rowcount)

    async def _changed(self, user: User) -> None:
        await self._on_change(user.id)

    async def _record(self, user: User, what: str, source: str, reason: str) -> None:
        await self._audit.record(
            "auth.step_up",
            actor=user.actor,
            outcome="failure",
            source=source,
            details={"for": what, "reason": reason},
        )
