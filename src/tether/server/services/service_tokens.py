"""Service tokens: how automation (a SOAR playbook) calls the API without a person's session.

An admin, with a fresh second factor, creates a token bound to one Active Response tier, a set
of segments, an expiry and optionally the source networks it may come from. The token is shown
once and stored as its SHA-256; it acts as "service:NAME", every call it makes is audited under
that name, and it can be revoked at once. It stands in for a person's password and second
factor together, so its bounds (segments, sources, expiry) do what the second factor does for a
person: limit what a stolen copy reaches (docs/adr/0038).
"""

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import Tier, approval_needed
from tether.server.auth.tokens import new_token, token_hash
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.services.users import USERNAME, AccessLostListener, User
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import segments, service_tokens

# Every service token starts with this, so the API tells it from a person's session at a glance
# (and a leaked one is easy to find in logs and repositories).
PREFIX = "tts_"
ACTOR_PREFIX = "service:"
MAX_LIFETIME = timedelta(days=365)
MAX_SEGMENTS = 64
MAX_SOURCES = 64
NOT_VALID = "This service token is not valid; ask an admin for a new one."


def principal_id(row_id: int) -> int:
    """The user id a token acts under: negative, so it never meets a person's (jobs remember
    who submitted them, and withdrawing a person's jobs must never touch a token's)."""
    return -row_id


@dataclass(frozen=True)
class ServiceTokenView:
    """A token as the listing shows it (never the token itself)."""

    name: str
    tier: str
    segments: list[str]
    sources: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None
    last_used_from: str | None


@dataclass(frozen=True)
class IssuedServiceToken:
    """A token just created: `token` is shown this once and never again."""

    token: str
    view: ServiceTokenView


def _view(r: Any) -> ServiceTokenView:
    """A row of `service_tokens` as the listing shows it."""
    return ServiceTokenView(
        name=r.name,
        tier=r.tier,
        segments=json.loads(r.segments),
        sources=json.loads(r.sources),
        created_by=r.created_by,
        created_at=as_utc(r.created_at),  # type: ignore[arg-type]
        expires_at=as_utc(r.expires_at),  # type: ignore[arg-type]
        revoked_at=as_utc(r.revoked_at),
        revoked_by=r.revoked_by,
        last_used_at=as_utc(r.last_used_at),
        last_used_from=r.last_used_from,
    )


def _networks(sources: list[str]) -> list[str]:
    """The source list as canonical network texts; Invalid names the first bad entry."""
    if len(sources) > MAX_SOURCES:
        raise Invalid(f"A service token takes at most {MAX_SOURCES} source networks.")
    networks: list[str] = []
    for text in sources:
        try:
            networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise Invalid(
                f"{text!r} is not an address or network (for example 10.0.0.0/8)."
            ) from None
    return networks


async def script_tokens_in(conn: AsyncConnection, segment: str) -> list[str]:
    """Names of the usable (not revoked, not expired) script-tier tokens that act in `segment`."""
    rows = await conn.execute(
        select(service_tokens.c.name, service_tokens.c.segments).where(
            service_tokens.c.tier == Tier.SCRIPT.value,
            service_tokens.c.revoked_at.is_(None),
            service_tokens.c.expires_at > utcnow(),
        )
    )
    return sorted(r.name for r in rows if segment in json.loads(r.segments))


def script_token_refusal(token: str, segment: str, approval: str) -> str:
    """The sentence refusing a script-tier token in a segment whose scripts need approval."""
    return (
        f"Segment {segment} needs a second person's approval for script actions "
        f"(approval {approval}), so service token {token} cannot hold the script tier there; "
        "give the token the respond tier or leave that segment out."
    )


def _from_allowed(address: str, sources: list[str]) -> bool:
    if not sources:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in sources)


class ServiceTokens:
    """Create, list, revoke and check service tokens; every change and call is audited."""

    def __init__(
        self, engine: AsyncEngine, audit: AuditLog, on_revoked: AccessLostListener | None = None
    ) -> None:
        self._engine = engine
        self._audit = audit
        # Told (with the token's principal id) when a token is revoked: its queued jobs go too.
        self._on_revoked = on_revoked

    async def create(
        self,
        name: str,
        tier: Tier,
        segment_names: list[str],
        lifetime: timedelta,
        sources: list[str],
        *,
        by: User,
        source: str,
    ) -> IssuedServiceToken:
        """A new token (the caller checked the admin's permission and step-up)."""
        if not USERNAME.fullmatch(name):
            raise Invalid(
                "A service token's name is 1 to 64 letters, digits, dots, dashes, underscores "
                "or @, starting with a letter or digit."
            )
        if not timedelta(minutes=5) <= lifetime <= MAX_LIFETIME:
            raise Invalid("A service token lives between 5 minutes and 365 days.")
        chosen = sorted(set(segment_names))
        if not chosen or len(chosen) > MAX_SEGMENTS:
            raise Invalid(f"Name 1 to {MAX_SEGMENTS} segments the service token may act in.")
        networks = _networks(sources)
        token = PREFIX + new_token()
        now = utcnow()
        async with self._audit.transaction() as tx:
            known = set(
                (
                    await tx.conn.execute(
                        select(segments.c.name).where(segments.c.name.in_(chosen))
                    )
                ).scalars()
            )
            missing = [s for s in chosen if s not in known]
            if missing:
                raise NotFound(f"There is no segment named {missing[0]!r}.")
            if tier is Tier.SCRIPT:
                # Issue 14: automation never holds the script tier where a person's scripts
                # would need a second person's approval (docs/adr/0039).
                settings = await tx.conn.execute(
                    select(segments.c.name, segments.c.approval).where(segments.c.name.in_(chosen))
                )
                for segment_name, approval in settings:
                    if approval_needed(approval, Tier.SCRIPT):
                        raise Conflict(script_token_refusal(name, segment_name, approval))
            try:
                await tx.conn.execute(
                    insert(service_tokens).values(
                        name=name,
                        token_hash=token_hash(token),
                        tier=tier.value,
                        segments=json.dumps(chosen),
                        sources=json.dumps(networks),
                        created_by=by.actor,
                        created_at=now,
                        expires_at=now + lifetime,
                    )
                )
            except IntegrityError as exc:
                raise Conflict(f"A service token named {name!r} already exists.") from exc
            await tx.record(
                "service_token.create",
                actor=by.actor,
                target=ACTOR_PREFIX + name,
                source=source,
                details={
                    "tier": tier.value,
                    "segments": chosen,
                    "sources": networks,
                    "expires_at": (now + lifetime).isoformat(),
                },
            )
        return IssuedServiceToken(token=token, view=await self.get(name))

    async def get(self, name: str) -> ServiceTokenView:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(service_tokens).where(service_tokens.c.name == name))
            ).first()
        if row is None:
            raise NotFound(f"There is no service token named {name!r}.")
        return _view(row)

    async def list(self) -> list[ServiceTokenView]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(select(service_tokens).order_by(service_tokens.c.name))
            ).all()
        return [_view(r) for r in rows]

    async def revoke(self, name: str, *, by: User, source: str) -> ServiceTokenView:
        """Revoke at once: the token's next call is refused."""
        async with self._audit.transaction() as tx:
            result = await tx.conn.execute(
                update(service_tokens)
                .where(service_tokens.c.name == name, service_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_by=by.actor)
            )
            if result.rowcount:
                await tx.record(
                    "service_token.revoke",
                    actor=by.actor,
                    target=ACTOR_PREFIX + name,
                    source=source,
                )
            row_id = (
                await tx.conn.execute(
                    select(service_tokens.c.id).where(service_tokens.c.name == name)
                )
            ).scalar()
        if row_id is None:
            raise NotFound(f"There is no service token named {name!r}.")
        if result.rowcount and self._on_revoked is not None:
            await self._on_revoked(principal_id(int(row_id)), "service token revoked")
        return await self.get(name)

    async def authenticate(
        self, token: str, address: str, *, method: str, path: str, forbidden: str | None = None
    ) -> User:
        """The principal behind a service token calling from `address`; each call (refused ones
        too, when the token exists) is audited under the token's name. `forbidden` is the
        caller's reason to refuse this route to any service token (Forbidden, audited)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(service_tokens).where(service_tokens.c.token_hash == token_hash(token))
                )
            ).first()
        if row is None:
            raise Unauthenticated(NOT_VALID)
        now = utcnow()
        refusal: str | None = None
        if row.revoked_at is not None:
            refusal = f"Service token {row.name} was revoked; ask an admin for a new one."
        elif now >= as_utc(row.expires_at):  # type: ignore[operator]
            refusal = f"Service token {row.name} has expired; ask an admin for a new one."
        elif not _from_allowed(address, json.loads(row.sources)):
            refusal = f"Service token {row.name} may not be used from {address}."
        elif forbidden is not None:
            refusal = forbidden
        actor = ACTOR_PREFIX + row.name
        async with self._audit.transaction() as tx:
            await tx.record(
                "service_token.call",
                actor=actor,
                target=path,
                outcome="failure" if refusal else "success",
                source=address,
                details={"method": method, **({"reason": refusal} if refusal else {})},
            )
            if refusal is None:
                await tx.conn.execute(
                    update(service_tokens)
                    .where(service_tokens.c.id == row.id)
                    .values(last_used_at=now, last_used_from=address[:64])
                )
        if refusal is not None:
            raise Forbidden(refusal) if refusal == forbidden else Unauthenticated(refusal)
        return User(
            id=principal_id(int(row.id)),
            username=actor,
            roles=frozenset({row.tier}),
            disabled=False,
            # The token is the whole credential (see the module's docstring and ADR 0038).
            mfa_verified=True,
            segments=frozenset(json.loads(row.segments)),
            service=True,
        )
