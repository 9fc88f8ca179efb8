"""The team: listing users, roles, disabling, marking MDR provider staff external. Admins only.

Whatever takes access away (disabling, removing the Active Response role, suspending or ending
external access, lowering an Active Response tier) ends the user's sessions at once through `Users.end_access`, which also tells
the listeners registered for live response sessions.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import TIER_ROLES, Role, Tier, tier_allows, tier_of
from tether.server.errors import Conflict, Forbidden, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment_codes import DEFAULT_LIFETIME, IssuedCode
from tether.server.services.users import User, Users, check_external
from tether.server.store.db import as_utc
from tether.server.store.tables import recovery_codes, role_migrations, user_roles, users

OWN_ROLES = "You cannot change the roles of your own account; ask another admin."
# The audit action of the record that reports the roles a migration changed.
ROLE_MIGRATION = "role.migrate"
OWN_FACTOR = "You cannot reset your own second factor; ask another admin."


@dataclass(frozen=True)
class UserInfo:
    """A user as the Team page lists them."""

    username: str
    roles: list[str]
    disabled: bool
    external: bool
    organisation: str | None
    access_expires_at: datetime | None
    mfa_enabled: bool
    created_at: datetime


class Team:
    def __init__(self, engine: AsyncEngine, audit: AuditLog, accounts: Users) -> None:
        self._engine = engine
        self._audit = audit
        self._users = accounts

    async def _id_of(self, conn: AsyncConnection, username: str) -> int:
        found = (
            await conn.execute(select(users.c.id).where(users.c.username == username))
        ).scalar()
        if found is None:
            raise NotFound(f"There is no user named {username!r}.")
        return int(found)

    async def list(self) -> list[UserInfo]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.username))).all()
            role_rows = (await conn.execute(select(user_roles))).all()
        roles: dict[int, list[str]] = {}
        for r in role_rows:
            roles.setdefault(r.user_id, []).append(r.role)
        return [
            UserInfo(
                username=row.username,
                roles=sorted(roles.get(row.id, [])),
                disabled=bool(row.disabled),
                external=bool(row.external),
                organisation=row.organisation,
                access_expires_at=as_utc(row.access_expires_at),
                mfa_enabled=row.mfa_secret is not None,
                created_at=as_utc(row.created_at),  # type: ignore[arg-type]
            )
            for row in rows
        ]

    async def get(self, username: str) -> UserInfo:
        for info in await self.list():
            if info.username == username:
                return info
        raise NotFound(f"There is no user named {username!r}.")

    async def _enabled_admins(self, conn: AsyncConnection) -> set[int]:
        rows = await conn.execute(
            select(users.c.id)
            .join(user_roles, user_roles.c.user_id == users.c.id)
            .where(user_roles.c.role == Role.ADMIN.value, users.c.disabled.is_(False))
        )
        return {int(i) for i in rows.scalars()}

    async def set_disabled(
        self, username: str, disabled: bool, *, actor: str, source: str
    ) -> UserInfo:
        async with self._audit.transaction() as tx:
            conn = tx.conn
            user_id = await self._id_of(conn, username)
            if disabled and await self._enabled_admins(conn) == {user_id}:
                raise Conflict(f"{username!r} is the last enabled admin; make another admin first.")
            await conn.execute(update(users).where(users.c.id == user_id).values(disabled=disabled))
            await tx.record(
                "user.disable" if disabled else "user.enable",
                actor=actor,
                target=username,
                source=source,
            )
        # The next request of the user's sessions reads the account again (docs/adr/0053).
        await self._users.forget_user(user_id)
        if disabled:
            await self._users.end_access(user_id, "disabled")
        return await self.get(username)

    async def _refuse_own_account(
        self, username: str, by: User, action: str, source: str, refusal: str, role: Role | None
    ) -> None:
        """Nobody changes their own roles or second factor: that would let one stolen session
        hand itself more access, or swap the factor that guards it. Refused and audited."""
        if by.username != username:
            return
        details: dict[str, object] = {"reason": "own account"}
        if role is not None:
            details["role"] = role.value
        await self._audit.record(
            action,
            actor=by.actor,
            target=username,
            outcome="failure",
            source=source,
            details=details,
        )
        raise Forbidden(refusal)

    async def grant_role(self, username: str, role: Role, *, by: User, source: str) -> UserInfo:
        """Give `role`; a tier replaces the tier the user held (one tier at a time), and a
        lower tier than before ends their sessions, as removing one does."""
        await self._refuse_own_account(username, by, "role.grant", source, OWN_ROLES, role)
        actor = by.actor
        async with self._audit.transaction() as tx:
            conn = tx.conn
            user_id = await self._id_of(conn, username)
            before = set(
                (
                    await conn.execute(
                        select(user_roles.c.role).where(user_roles.c.user_id == user_id)
                    )
                ).scalars()
            )
            replaced = sorted((before & {t.value for t in TIER_ROLES}) - {role.value})
            if role in TIER_ROLES and replaced:
                await conn.execute(
                    delete(user_roles).where(
                        user_roles.c.user_id == user_id, user_roles.c.role.in_(replaced)
                    )
                )
            else:
                replaced = []
            held = role.value in before
            if not held:
                await conn.execute(insert(user_roles).values(user_id=user_id, role=role.value))
                details: dict[str, object] = {"role": role.value}
                if replaced:
                    details["replaced"] = replaced
                await tx.record(
                    "role.grant", actor=actor, target=username, source=source, details=details
                )
        if not held:
            await self._users.forget_user(user_id)
            old_tier = tier_of(before)
            if (
                old_tier is not None
                and role in TIER_ROLES
                and not tier_allows(Tier(role.value), old_tier)
            ):
                await self._users.end_access(user_id, "active response tier lowered")
        return await self.get(username)

    async def revoke_role(self, username: str, role: Role, *, by: User, source: str) -> UserInfo:
        await self._refuse_own_account(username, by, "role.revoke", source, OWN_ROLES, role)
        actor = by.actor
        async with self._audit.transaction() as tx:
            conn = tx.conn
            user_id = await self._id_of(conn, username)
            if role is Role.ADMIN and await self._enabled_admins(conn) == {user_id}:
                raise Conflict(f"{username!r} is the last enabled admin; make another admin first.")
            result = await conn.execute(
                delete(user_roles).where(
                    user_roles.c.user_id == user_id, user_roles.c.role == role.value
                )
            )
            if result.rowcount:
                await tx.record(
                    "role.revoke",
                    actor=actor,
                    target=username,
                    source=source,
                    details={"role": role.value},
                )
        if result.rowcount:
            await self._users.forget_user(user_id)
        if result.rowcount and role in TIER_ROLES:
            await self._users.end_access(user_id, "active response role removed")
        return await self.get(username)

    async def record_role_migrations(self) -> int:
        """At start: write the role changes a migration made (`responder` became `script`) to
        the chain, once, in the transaction that marks them recorded; returns how many."""
        async with self._audit.transaction() as tx:
            rows = (
                await tx.conn.execute(
                    select(role_migrations)
                    .where(role_migrations.c.record_seq.is_(None))
                    .order_by(role_migrations.c.id)
                )
            ).all()
            if not rows:
                return 0
            record = await tx.record(
                ROLE_MIGRATION,
                actor="platform",
                source="platform",
                details={
                    "from": rows[0].from_role,
                    "to": rows[0].to_role,
                    "users": [r.username for r in rows],
                    "why": "the Active Response role became three tiers; responder could do "
                    "what the script tier can",
                },
            )
            await tx.conn.execute(
                update(role_migrations)
                .where(role_migrations.c.id.in_([r.id for r in rows]))
                .values(record_seq=record.seq)
            )
        return len(rows)

    async def set_external(
        self,
        username: str,
        *,
        external: bool,
        organisation: str | None,
        access_expires_at: datetime | None,
        actor: str,
        source: str,
    ) -> UserInfo:
        check_external(external, organisation)
        async with self._audit.transaction() as tx:
            user_id = await self._id_of(tx.conn, username)
            await tx.conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(
                    external=external,
                    organisation=organisation if external else None,
                    access_expires_at=access_expires_at if external else None,
                )
            )
            await tx.record(
                "user.external",
                actor=actor,
                target=username,
                source=source,
                details={
                    "external": external,
                    "organisation": organisation,
                    "access_expires_at": (
                        access_expires_at.isoformat() if access_expires_at else None
                    ),
                },
            )
        await self._users.forget_user(user_id)
        if external and access_expires_at is not None and access_expires_at <= self._users.now():
            await self._users.end_access(user_id, "external access expired")
        return await self.get(username)

    async def end_external_access(self, actor: str, source: str) -> None:
        """External access was suspended: end every external user's sessions now."""
        async with self._engine.connect() as conn:
            ids = (
                (await conn.execute(select(users.c.id).where(users.c.external.is_(True))))
                .scalars()
                .all()
            )
        for user_id in ids:
            await self._users.end_access(int(user_id), "external access suspended")

    async def reset_mfa(
        self, username: str, *, by: User, source: str, lifetime: timedelta = DEFAULT_LIFETIME
    ) -> IssuedCode:
        """Forget a user's second factor and recovery codes (a lost phone); their sessions end,
        and the enrollment code returned (shown once) lets them enroll a new one."""
        await self._refuse_own_account(username, by, "mfa.reset", source, OWN_FACTOR, None)
        async with self._audit.transaction() as tx:
            conn = tx.conn
            user_id = await self._id_of(conn, username)
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(
                    mfa_secret=None,
                    mfa_pending_secret=None,
                    mfa_pending_session=None,
                    mfa_last_step=None,
                )
            )
            await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
            await tx.record("mfa.reset", actor=by.actor, target=username, source=source)
        await self._users.end_access(user_id, "second factor reset")
        return await self._users.mfa.codes.issue(
            username,
            actor=by.actor,
            actor_username=by.username,
            source=source,
            lifetime=lifetime,
        )
