"""A user's open sessions: listed, and ended one by one (a laptop left logged in, a stolen
cookie). Users see and end their own other sessions; admins those of anyone. Audited.

A session is named by the first 16 hex digits of its token's SHA-256: enough to tell sessions
apart, and useless for logging in (the token itself is never stored).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.errors import Invalid, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.users import Stage, User
from tether.server.store.db import as_utc
from tether.server.store.tables import sessions, users

ID_LENGTH = 16


@dataclass(frozen=True)
class SessionInfo:
    id: str
    client: str
    source: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    mfa_verified: bool
    # The session this request came with.
    current: bool


class UserSessions:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        clock: Callable[[], datetime],
        on_change: Callable[[int], Awaitable[None]],
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock
        # Told the user id when one of their sessions ended: authentication's cache forgets it.
        self._on_change = on_change

    async def _user_id(self, username: str) -> int:
        async with self._engine.connect() as conn:
            found = (
                await conn.execute(select(users.c.id).where(users.c.username == username))
            ).scalar()
        if found is None:
            raise NotFound(f"There is no user named {username!r}.")
        return int(found)

    async def list(self, username: str, *, asking: User) -> list[SessionInfo]:
        """`username`'s sessions that still work (newest first); `asking` marks its own."""
        user_id = await self._user_id(username)
        now = self._clock()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(sessions)
                    .where(
                        sessions.c.user_id == user_id,
                        sessions.c.revoked_at.is_(None),
                        sessions.c.expires_at > now,
                        sessions.c.stage != Stage.SECOND_FACTOR.value,
                    )
                    .order_by(sessions.c.created_at.desc())
                )
            ).all()
        return [
            SessionInfo(
                id=row.token_hash[:ID_LENGTH],
                client=row.client,
                source=row.source,
                created_at=as_utc(row.created_at),  # type: ignore[arg-type]
                last_used_at=as_utc(row.last_used_at),  # type: ignore[arg-type]
                expires_at=as_utc(row.expires_at),  # type: ignore[arg-type]
                mfa_verified=bool(row.mfa_verified),
                current=row.token_hash == asking.session_hash,
            )
            for row in rows
        ]

    async def end(self, username: str, session_id: str, *, by: User, source: str) -> None:
        """End one of `username`'s sessions now; not the one `by` is using (that is logout)."""
        if len(session_id) != ID_LENGTH or any(c not in "0123456789abcdef" for c in session_id):
            raise Invalid(f"A session ID is {ID_LENGTH} hexadecimal digits, as 'sessions' lists.")
        if by.session_hash.startswith(session_id):
            raise Invalid("That is the session you are using; log out to end it.")
        user_id = await self._user_id(username)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(sessions)
                .where(
                    sessions.c.user_id == user_id,
                    sessions.c.token_hash.startswith(session_id, autoescape=True),
                    sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=self._clock())
            )
        if result.rowcount != 1:
            raise NotFound(f"{username} has no open session {session_id}.")
        await self._on_change(user_id)
        await self._audit.record(
            "session.end",
            actor=by.actor,
            target=username,
            source=source,
            details={"session": session_id},
        )
