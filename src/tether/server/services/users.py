"""Users, their roles, server-side sessions and the two-step login.

A login is the password step, then (for anyone with a second factor) the code step. Someone who
must use a second factor but has none gets a session limited to enrolling one. Every attempt, at
either step, goes to the throttle and to the audit log: a success or a wrong second-factor code
(the password was right) as a record of its own, a failed password or a throttled attempt in the
per-source summary (ADR 0026), so an unauthenticated flood cannot grow the chain without bound.
"""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import (
    MFA_REQUIRED_ROLES,
    TIER_ROLES,
    Permission,
    Role,
    Tier,
    permissions_of,
    tier_of,
)
from tether.server.auth.passwords import MIN_LENGTH, hash_password, verify_password
from tether.server.auth.sealing import Sealer
from tether.server.auth.tokens import new_token, token_hash
from tether.server.errors import (
    Conflict,
    Invalid,
    SecondFactorRequired,
    Throttled,
    Unauthenticated,
)
from tether.server.services.access_settings import AccessSettings, read_access_settings
from tether.server.services.audit import AuditLog
from tether.server.services.bus import Bus, Topic
from tether.server.services.mfa import CodeCheck, Mfa
from tether.server.services.refusal_summary import RefusalSummary
from tether.server.services.session_cache import SessionCache
from tether.server.services.throttle import LoginThrottle, ThrottlePolicy
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import sessions, user_roles, users

log = logging.getLogger(__name__)
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Every failed login gets this one sentence, whether the user exists, is disabled or typed the
# wrong password: the answer must not reveal which.
LOGIN_REFUSED = "The username or password is wrong."
CODE_REFUSED = "The code is wrong; enter the one your authenticator app shows now."
CODE_REPLAYED = "That code was already used; wait for the next one."
# The audit action of the per-source summary of failed and throttled login attempts.
LOGIN_FAILURES = "auth.login.failures"
VERIFY_FIRST = "Log in again with your second factor: this session has not passed it."


def enroll_first(username: str) -> str:
    """What someone who must use a second factor but has none is told, at login and at every
    refused request: how to get an enrollment code and enroll."""
    return (
        "Enroll a second factor first: your role requires one; ask an admin for an enrollment "
        f"code ('tether user enrollment-code {username}'), then run "
        "'tether mfa enroll --enrollment-code CODE' and 'tether mfa confirm --code CODE'."
    )


# A pending second step lives this long and dies after this many wrong codes.
SECOND_STEP_LIFETIME = timedelta(minutes=5)
SECOND_STEP_TRIES = 5

AccessLostListener = Callable[[int, str], Awaitable[None]]
# The id of a SESSIONS_CHANGED message that means every user.
EVERYONE = "*"


class Stage(StrEnum):
    FULL = "full"
    SECOND_FACTOR = "second_factor"
    ENROLL = "enroll"


@dataclass(frozen=True)
class User:
    id: int
    username: str
    roles: frozenset[str]
    disabled: bool
    # True once this session has passed the second factor; response actions require it.
    mfa_verified: bool = False
    external: bool = False
    organisation: str | None = None
    access_expires_at: datetime | None = None
    mfa_enabled: bool = False
    # This session may only set up a second factor (and log out) until it has one.
    enrollment_only: bool = False
    # When this session last passed its second factor (step-up asks again after a while), and
    # the session itself (the SHA-256 of its token), for the changes that concern it.
    mfa_verified_at: datetime | None = None
    session_hash: str = ""
    # A service token (docs/adr/0038) acts only on hosts of these segments; None for people.
    segments: frozenset[str] | None = None
    service: bool = False

    @property
    def permissions(self) -> frozenset[Permission]:
        return permissions_of(set(self.roles))

    @property
    def tier(self) -> Tier | None:
        """The user's Active Response tier, or None without the role."""
        return tier_of(self.roles)

    @property
    def actor(self) -> str:
        """How the audit log names this user: external users carry their organisation."""
        if self.external and self.organisation:
            return f"{self.username} ({self.organisation})"
        return self.username


@dataclass(frozen=True)
class Session:
    token: str
    user: User
    expires_at: datetime
    stage: Stage = Stage.FULL


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    lifetime: timedelta


@dataclass(frozen=True)
class CachedSession:
    """What authentication read of a session: its row's fields, the account (without the
    per-session fields) and the access settings."""

    user_id: int
    stage: str
    last_used_at: datetime
    expires_at: datetime
    mfa_verified: bool
    mfa_verified_at: datetime | None
    user: User
    settings: AccessSettings


def mfa_required(roles: frozenset[str], settings: AccessSettings) -> bool:
    return settings.mfa_required_for_everyone or any(
        r in {m.value for m in MFA_REQUIRED_ROLES} for r in roles
    )


ONE_TIER = "A user holds one Active Response tier at a time; choose collect, respond or script."


def check_one_tier(roles: set[Role]) -> None:
    """Refuse a set of roles naming two tiers: the tier a refusal names must be unambiguous."""
    if len(roles & TIER_ROLES) > 1:
        raise Invalid(ONE_TIER)


def address_of(source: str) -> str:
    """The network address part of a `source` ("ADDRESS user-agent")."""
    return source.partition(" ")[0] or "unknown"


def client_text_of(source: str) -> str:
    """The user-agent part of a `source` ("ADDRESS user-agent")."""
    return source.partition(" ")[2]


class Users:
    """Accounts and sessions; every login attempt goes to the audit log."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        policy: SessionPolicy,
        clock: Callable[[], datetime] = utcnow,
        *,
        sealer: Sealer,
        throttle: ThrottlePolicy | None = None,
        cache: "SessionCache[CachedSession] | None" = None,
        bus: Bus | None = None,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._policy = policy
        self._clock = clock
        self._throttle = LoginThrottle(throttle or ThrottlePolicy())
        # Failed and throttled logins, one audit record per source per minute.
        self.login_failures = RefusalSummary(audit, LOGIN_FAILURES, clock)
        self._access_lost: list[AccessLostListener] = []
        # What authentication read, for a few seconds (docs/adr/0053); every change that can
        # take access away forgets it here and, over the bus, in the other processes.
        self.cache: SessionCache[CachedSession] = cache if cache is not None else SessionCache()
        self._bus = bus
        if bus is not None:
            bus.subscribe(Topic.SESSIONS_CHANGED, self._sessions_changed)
        self.mfa = Mfa(engine, audit, sealer, clock, on_change=self.forget_user)

    # -- the session cache ---------------------------------------------------------------------

    async def forget_user(self, user_id: int) -> None:
        """Make the next request of each of `user_id`'s sessions read the database again, here
        and in the other processes: call it after committing any change to the account, its
        roles or its sessions."""
        self.cache.forget_user(user_id)
        if self._bus is not None and self._bus.spans_processes:
            await self._bus.publish(Topic.SESSIONS_CHANGED, [str(user_id)])

    async def forget_everyone(self) -> None:
        """Like `forget_user` for every user (a platform-wide access setting changed)."""
        self.cache.forget_all()
        if self._bus is not None and self._bus.spans_processes:
            await self._bus.publish(Topic.SESSIONS_CHANGED, [EVERYONE])

    async def _sessions_changed(self, ids: tuple[str, ...]) -> None:
        """Another process changed these users' access (or everyone's)."""
        for ident in ids:
            if ident == EVERYONE:
                self.cache.forget_all()
            elif ident.isdigit():
                self.cache.forget_user(int(ident))

    # -- access lost ---------------------------------------------------------------------------

    def on_access_lost(self, listener: AccessLostListener) -> None:
        """Call `listener(user_id, reason)` whenever a user's access ends before its time
        (disabled, Active Response role removed, external access suspended or ended), so live
        response sessions can be closed at once."""
        self._access_lost.append(listener)

    def now(self) -> datetime:
        return self._clock()

    async def end_access(self, user_id: int, reason: str) -> None:
        """End the user's sessions now and tell the access-lost listeners."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
        await self.forget_user(user_id)
        for listener in list(self._access_lost):
            try:
                await listener(user_id, reason)
            except Exception:
                # The sessions are revoked already; one broken listener must not keep the
                # others (or the admin's request) from finishing.
                log.exception("An access-lost listener failed for user %d.", user_id)

    # -- accounts ------------------------------------------------------------------------------

    async def create(
        self,
        username: str,
        password: str,
        roles: set[Role],
        *,
        external: bool = False,
        organisation: str | None = None,
        access_expires_at: datetime | None = None,
        actor: str | None = None,
        source: str = "",
    ) -> User:
        if not USERNAME.fullmatch(username):
            raise Invalid(
                "A username is 1 to 64 letters, digits, dots, dashes, underscores or @, "
                "starting with a letter or digit."
            )
        if len(password) < MIN_LENGTH:
            raise Invalid(f"A password needs at least {MIN_LENGTH} characters.")
        check_external(external, organisation)
        check_one_tier(roles)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(users).values(
                        username=username,
                        password_hash=hash_password(password),
                        disabled=False,
                        created_at=self._clock(),
                        external=external,
                        organisation=organisation if external else None,
                        access_expires_at=access_expires_at if external else None,
                    )
                )
                user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                for role in roles:
                    await conn.execute(insert(user_roles).values(user_id=user_id, role=role.value))
        except IntegrityError as exc:
            raise Conflict(f"A user named {username!r} already exists.") from exc
        if actor is not None:
            await self._audit.record(
                "user.create",
                actor=actor,
                target=username,
                source=source,
                details={
                    "roles": sorted(r.value for r in roles),
                    "external": external,
                    "organisation": organisation,
                    "access_expires_at": access_expires_at.isoformat()
                    if access_expires_at
                    else None,
                },
            )
        return User(
            user_id,
            username,
            frozenset(r.value for r in roles),
            False,
            external=external,
            organisation=organisation if external else None,
            access_expires_at=access_expires_at if external else None,
        )

    async def _load(self, conn: AsyncConnection, user_id: int) -> User | None:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if row is None:
            return None
        roles = (
            await conn.execute(select(user_roles.c.role).where(user_roles.c.user_id == row.id))
        ).scalars()
        return User(
            row.id,
            row.username,
            frozenset(roles),
            bool(row.disabled),
            external=bool(row.external),
            organisation=row.organisation,
            access_expires_at=as_utc(row.access_expires_at),
            mfa_enabled=row.mfa_secret is not None,
        )

    # -- login ---------------------------------------------------------------------------------

    async def _refuse_if_throttled(
        self, conn: AsyncConnection, username: str, source: str, client: str, factor: str
    ) -> None:
        now = self._clock()
        wait = await self._throttle.wait_needed(conn, username, address_of(source), now)
        if wait is not None:
            self._note_failure(username, source, client, f"throttled ({factor})")
            unit = "second" if wait == 1 else "seconds"
            raise Throttled(f"Too many failed logins; try again in {wait} {unit}.", wait)

    def _note_failure(self, username: str, source: str, client: str, reason: str) -> None:
        self.login_failures.note(
            address_of(source),
            f"{reason} via {client}",
            account=username or "-",
            client_text=client_text_of(source),
        )

    async def login(self, username: str, password: str, *, source: str, client: str) -> Session:
        """Check the password; open a session, a pending second step or an enrollment-only
        session; or raise Unauthenticated / Throttled (audited every way)."""
        now = self._clock()
        async with self._engine.begin() as conn:
            await self._refuse_if_throttled(conn, username, source, client, "password")
            attempt = await self._throttle.record(
                conn, username, address_of(source), now, success=False
            )
        async with self._engine.connect() as conn:
            # A name no account can have is not looked up (a NUL would fail the query itself).
            row = (
                (
                    await conn.execute(
                        select(users.c.id, users.c.password_hash).where(
                            users.c.username == username
                        )
                    )
                ).first()
                if USERNAME.fullmatch(username)
                else None
            )
            user = await self._load(conn, int(row.id)) if row is not None else None
            settings = await read_access_settings(conn)
        # Outside any transaction: Argon2id takes a while and must not hold a connection's locks.
        ok = verify_password(row.password_hash if row else None, password)
        reason = _refusal(user, ok, settings, now)
        if reason is None:
            async with self._engine.begin() as conn:
                await self._throttle.mark_success(conn, attempt)
        if reason is not None or user is None:
            self._note_failure(username, source, client, reason or "unknown user")
            raise Unauthenticated(LOGIN_REFUSED)
        if user.mfa_enabled:
            stage, expires = Stage.SECOND_FACTOR, now + SECOND_STEP_LIFETIME
        elif mfa_required(user.roles, settings):
            stage, expires = Stage.ENROLL, now + self._policy.lifetime
        else:
            stage, expires = Stage.FULL, now + self._policy.lifetime
        token = await self._open_session(user.id, client, source, stage, expires, verified=False)
        await self._audit.record(
            "auth.login",
            actor=user.actor,
            source=source,
            details={"client": client, "factor": "password", "next": stage.value},
        )
        return Session(token=token, user=user, expires_at=expires, stage=stage)

    async def _open_session(
        self,
        user_id: int,
        client: str,
        source: str,
        stage: Stage,
        expires: datetime,
        *,
        verified: bool,
    ) -> str:
        token = new_token()
        now = self._clock()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    token_hash=token_hash(token),
                    user_id=user_id,
                    client=client[:16],
                    source=source[:64],
                    created_at=now,
                    last_used_at=now,
                    expires_at=expires,
                    stage=stage.value,
                    mfa_verified=verified,
                    mfa_verified_at=now if verified else None,
                    failed_codes=0,
                )
            )
        return token

    async def second_factor(
        self,
        pending_token: str,
        *,
        code: str | None = None,
        recovery_code: str | None = None,
        source: str,
        client: str,
    ) -> Session:
        """The second login step: a TOTP code or a recovery code for a pending login."""
        now = self._clock()
        digest = token_hash(pending_token)
        factor = "recovery_code" if recovery_code else "totp"
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(sessions).where(
                        sessions.c.token_hash == digest,
                        sessions.c.stage == Stage.SECOND_FACTOR.value,
                        sessions.c.revoked_at.is_(None),
                    )
                )
            ).first()
            user = await self._load(conn, int(row.user_id)) if row is not None else None
            settings = await read_access_settings(conn)
        expires = as_utc(row.expires_at) if row is not None else None
        # Disabled, suspended or expired between the two steps: as dead as a timed-out step.
        if (
            user is None
            or expires is None
            or now >= expires
            or _refusal(user, True, settings, now) is not None
        ):
            raise Unauthenticated("This login has expired; start again with your password.")
        async with self._engine.begin() as conn:
            await self._refuse_if_throttled(conn, user.username, source, client, factor)
            attempt = await self._throttle.record(
                conn, user.username, address_of(source), now, success=False
            )
        if recovery_code:
            check = await self.mfa.use_recovery_code(user.id, recovery_code)
        else:
            check = await self.mfa.check_code(user.id, code or "")
        async with self._engine.begin() as conn:
            if check is CodeCheck.OK:
                await self._throttle.mark_success(conn, attempt)
            else:
                # Counted in the database, not from the row read above: parallel wrong codes
                # must all count towards the limit.
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.token_hash == digest)
                    .values(failed_codes=sessions.c.failed_codes + 1)
                )
                await conn.execute(
                    update(sessions)
                    .where(
                        sessions.c.token_hash == digest,
                        sessions.c.failed_codes >= SECOND_STEP_TRIES,
                    )
                    .values(revoked_at=now)
                )
        if check is not CodeCheck.OK:
            await self._audit.record(
                "auth.login",
                actor=user.actor,
                outcome="failure",
                source=source,
                details={"client": client, "reason": check.value, "factor": factor},
            )
            raise Unauthenticated(CODE_REPLAYED if check is CodeCheck.REPLAY else CODE_REFUSED)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions).where(sessions.c.token_hash == digest).values(revoked_at=now)
            )
        # A new token for the full session: the pending one never becomes a real session.
        lifetime = now + self._policy.lifetime
        token = await self._open_session(
            user.id, client, source, Stage.FULL, lifetime, verified=True
        )
        await self._audit.record(
            "auth.login",
            actor=user.actor,
            source=source,
            details={"client": client, "factor": factor},
        )
        user = replace(user, mfa_verified=True)
        return Session(token=token, user=user, expires_at=lifetime, stage=Stage.FULL)

    # -- sessions ------------------------------------------------------------------------------

    async def authenticate(self, token: str, *, enrolling: bool = False) -> User:
        """The user behind a bearer token, refreshing its idle timer; Unauthenticated if none.

        This is the second-factor gate every API route, page and live session passes through:
        a session whose account needs a second factor it has not passed in this session is
        refused (SecondFactorRequired) unless the caller is one of the few enrollment steps
        (`enrolling`). Closed by default: a caller that forgets the flag is refused.
        """
        now = self._clock()
        digest = token_hash(token)
        found = self.cache.get(digest)
        if found is None:
            found = await self._read_session(digest)
        user = found.user
        last_used = found.last_used_at
        if now >= found.expires_at or now - last_used >= self._policy.idle:
            raise Unauthenticated("Your session has expired; log in again.")
        settings = found.settings
        if user.disabled:
            raise Unauthenticated("Your account is disabled.")
        if user.external and settings.external_access_suspended:
            raise Unauthenticated("Access for external users is suspended.")
        if user.external and user.access_expires_at is not None and now >= user.access_expires_at:
            raise Unauthenticated(
                f"Your access ended on {user.access_expires_at:%Y-%m-%d %H:%M} UTC."
            )
        verified = found.mfa_verified
        limited = found.stage == Stage.ENROLL.value or (
            mfa_required(user.roles, settings) and not verified
        )
        # Refresh at most once a minute: one write per request would serialise SQLite.
        if now - last_used > timedelta(minutes=1):
            generation = self.cache.generation
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(sessions).where(sessions.c.token_hash == digest).values(last_used_at=now)
                )
            self.cache.put(digest, found.user_id, replace(found, last_used_at=now), generation)
        if limited and not enrolling:
            if user.mfa_enabled:
                raise SecondFactorRequired(VERIFY_FIRST, enrolled=True)
            raise SecondFactorRequired(enroll_first(user.username), enrolled=False)
        return replace(
            user,
            mfa_verified=verified,
            enrollment_only=limited,
            mfa_verified_at=found.mfa_verified_at,
            session_hash=digest,
        )

    async def _read_session(self, digest: str) -> CachedSession:
        """What the database says of the session `digest` (kept in the cache unless something
        changed meanwhile); Unauthenticated for a session that is gone, ended or half-done."""
        generation = self.cache.generation
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
            if row.stage == Stage.SECOND_FACTOR.value:
                raise Unauthenticated("Finish logging in: send your second-factor code first.")
            user = await self._load(conn, int(row.user_id))
            settings = await read_access_settings(conn)
        if user is None:
            raise Unauthenticated("Your account is disabled.")
        found = CachedSession(
            user_id=user.id,
            stage=str(row.stage),
            last_used_at=last_used,
            expires_at=expires,
            mfa_verified=bool(row.mfa_verified),
            mfa_verified_at=as_utc(row.mfa_verified_at),
            user=user,
            settings=settings,
        )
        self.cache.put(digest, found.user_id, found, generation)
        return found

    async def logout(self, token: str, user: User, *, source: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == token_hash(token))
                .values(revoked_at=self._clock())
            )
        await self.forget_user(user.id)
        await self._audit.record("auth.logout", actor=user.actor, source=source)

    async def run_purger(self, interval_seconds: float) -> None:
        """Purge expired sessions and old login attempts every `interval_seconds`, forever."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.purge_expired_sessions()
            except SQLAlchemyError:
                # A busy or briefly unreachable database: the next round purges the same rows.
                log.warning("Purging expired sessions failed; retrying later.", exc_info=True)

    async def purge_expired_sessions(self) -> None:
        now = self._clock()
        async with self._engine.begin() as conn:
            await conn.execute(delete(sessions).where(sessions.c.expires_at < now))
            await self._throttle.purge(conn, now)


def check_external(external: bool, organisation: str | None) -> None:
    if external and not (organisation and organisation.strip()):
        raise Invalid("An external user needs the name of their organisation.")


def _refusal(
    user: User | None, password_ok: bool, settings: AccessSettings, now: datetime
) -> str | None:
    """Why a password login is refused (for the audit log only), or None."""
    if user is None:
        return "unknown user"
    if not password_ok:
        return "password"
    if user.disabled:
        return "disabled"
    if user.external and settings.external_access_suspended:
        return "external access suspended"
    if user.external and user.access_expires_at is not None and now >= user.access_expires_at:
        return "external access expired"
    return None
