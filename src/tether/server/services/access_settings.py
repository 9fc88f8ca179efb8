"""Platform-wide access switches an admin sets at run time, persisted in the database.

- `mfa_required_for_everyone`: every user must use a second factor. Holders of the Active Response
  role must use one whatever this says (`tether.protocol.MFA_REQUIRED_ROLES`).
- `external_access_suspended`: all external (MDR provider) users are locked out at once.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields, replace

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server.errors import Invalid
from tether.server.services.audit import AuditLog
from tether.server.store.tables import platform_settings


@dataclass(frozen=True)
class AccessSettings:
    mfa_required_for_everyone: bool = False
    external_access_suspended: bool = False


NAMES = frozenset(f.name for f in fields(AccessSettings))


async def read_access_settings(conn: AsyncConnection) -> AccessSettings:
    rows = (await conn.execute(select(platform_settings))).all()
    stored = {r.key: json.loads(r.value) for r in rows if r.key in NAMES}
    return AccessSettings(**stored)


class AccessSettingsStore:
    """Reads and changes the switches; each change is audited."""

    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        on_external_suspended: Callable[[str, str], Awaitable[None]],
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self._engine = engine
        self._audit = audit
        # Called after a change: authentication's cache forgets every session (ADR 0053).
        self._on_change = on_change
        # Called with (actor, source) when external access is switched off, so live sessions and
        # live response sessions of external users end at once.
        self._on_external_suspended = on_external_suspended

    async def get(self) -> AccessSettings:
        async with self._engine.connect() as conn:
            return await read_access_settings(conn)

    async def update(self, changes: dict[str, bool], *, actor: str, source: str) -> AccessSettings:
        unknown = set(changes) - NAMES
        if unknown:
            raise Invalid(f"There is no setting named {sorted(unknown)[0]!r}.")
        async with self._audit.transaction() as tx:
            conn = tx.conn
            before = await read_access_settings(conn)
            after = replace(before, **changes)
            for name, value in changes.items():
                await conn.execute(delete(platform_settings).where(platform_settings.c.key == name))
                await conn.execute(
                    insert(platform_settings).values(key=name, value=json.dumps(value))
                )
            changed = {k: v for k, v in asdict(after).items() if asdict(before)[k] != v}
            if changed:
                await tx.record("settings.change", actor=actor, source=source, details=changed)
        if changed:
            await self._on_change()
        if after.external_access_suspended and not before.external_access_suspended:
            await self._on_external_suspended(actor, source)
        return after
