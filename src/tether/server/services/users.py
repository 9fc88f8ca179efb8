"""Users, their roles, and server-side sessions."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Permission, Role, permissions_of
from tether.server.auth.passwords import MIN_LENGTH, hash_password, verify_password
from tether.server.auth.tokens import new_token, token_hash
from tether.server.errors import Conflict, Invalid, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import sessions, user_roles, users

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Every failed login gets this one sentence, whether the user exists, is disabled or typed the
# wrong password: the answer must not reveal which.
LOGIN_REFUSED = "The username or password is wrong."


@dataclass(frozen=True)
class User:
    id: int
    username: str
    roles: frozenset[str]
    disabled: bool
    # True once this session has passed the second factor; response actions require it.
    mfa_verified: bool = False

    @property
    def permissions(self) -> frozenset[Permission]:
        return permissions_of(set(self.roles))


@dataclass(frozen=True)
class Session:
    token: str
    user: User
    expires_at: datetime


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    lifetime: timedelta


class Users:
    """Accounts and sessions; every login attempt goes to the audit log."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        policy: SessionPolicy,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._policy = policy
        self._clock = clock

    async def create(self, username: str, password: str, roles: set[Role]) -> User:
        if not USERNAME.match(username):
            raise Invalid(
                "A username is 1 to 64 letters, digits, dots, dashes, underscores or @, "
                "starting with a letter or digit."
            )
        if len(password) < MIN_LENGTH:
            raise Invalid(f"A password needs at least {MIN_LENGTH} characters.")
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(users).values(
                        username=username,
                        password_hash=hash_password(password),
                        disabled=False,
                        created_at=self._clock(),
                    )
                )
                user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                for role in roles:
                    await conn.execute(insert(user_roles).values(user_id=user_id, role=role.value))
        except IntegrityError as exc:
            raise Conflict(f"A user named {username!r} already exists.") from exc
        return User(user_id, username, frozenset(r.value for r in roles), False)

    async def _load(self, user_id: int) -> User | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
            if row is None:
                return None
            roles = (
                await conn.execute(select(user_roles.c.role).where(user_roles.c.user_id == row.id))
            ).scalars()
            return User(row.id, row.username, frozenset(roles), bool(row.disabled))

    async def login(self, username: str, password: str, *, source: str, client: str) -> Session:
        """Check the password and open a session, or raise Unauthenticated (audited both ways)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(users.c.id, users.c.password_hash, users.c.disabled).where(
                        users.c.username == username
                    )
                )
            ).first()
        ok = verify_password(row.password_hash if row else None, password)
        if row is None or not ok or row.disabled:
            reason = "unknown user" if row is None else "disabled" if row.disabled else "password"
            await self._audit.record(
                "auth.login",
                actor=username[:64] or "-",
                outcome="failure",
                source=source,
                details={"client": client, "reason": reason, "factor": "password"},
            )
            raise Unauthenticated(LOGIN_REFUSED)
        user = await self._load(int(row.id))
        assert user is not None
        token = new_token()
        now = self._clock()
        expires = now + self._policy.lifetime
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    token_hash=token_hash(token),
                    user_id=user.id,
                    client=client[:16],
                    source=source[:64],
                    created_at=now,
                    last_used_at=now,
                    expires_at=expires,
                )
            )
        await self._audit.record(
            "auth.login",
            actor=user.username,
            source=source,
            details={"client": client, "factor": "password"},
        )
        return Session(token=token, user=user, expires_at=expires)

    async def authenticate(self, token: str) -> User:
        """The user behind a bearer token, refreshing its idle timer; Unauthenticated if none."""
        now = self._clock()
        digest = token_hash(token)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(sessions).where(sessions.c.token_hash == digest))
            ).first()
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("Your session is not valid; log in again.")
        last_used = as_utc(row.last_used_at)
        expires = as_utc(row.expires_at)
        if last_used is None or expires is None:
            raise Unauthenticated("Your session is not valid; log in again.")
        if now >= expires or now - last_used >= self._policy.idle:
            raise Unauthenticated("Your session has expired; log in again.")
        user = await self._load(int(row.user_id))
        if user is None or user.disabled:
            raise Unauthenticated("Your account is disabled.")
        # Refresh at most once a minute: one write per request would serialise SQLite.
        if now - last_used > timedelta(minutes=1):
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(sessions).where(sessions.c.token_hash == digest).values(last_used_at=now)
                )
        return user

    async def logout(self, token: str, user: User, *, source: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == token_hash(token))
                .values(revoked_at=self._clock())
            )
        await self._audit.record("auth.logout", actor=user.username, source=source)

    async def purge_expired_sessions(self) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(sessions).where(sessions.c.expires_at < self._clock()))
