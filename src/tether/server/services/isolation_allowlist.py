"""Where the admin-set isolation allowlist is kept: one platform setting, written by the isolation
service and read by it (for isolation jobs) and by policy delivery (for isolation scripts ask for)."""

from pydantic import TypeAdapter
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.protocol.isolation import AllowRule
from tether.server.store.tables import platform_settings

ALLOWLIST_KEY = "isolation_allowlist"
RULES: TypeAdapter[list[AllowRule]] = TypeAdapter(list[AllowRule])


async def read_allowlist(conn: AsyncConnection) -> list[AllowRule]:
    value = (
        await conn.execute(
            select(platform_settings.c.value).where(platform_settings.c.key == ALLOWLIST_KEY)
        )
    ).scalar_one_or_none()
    return RULES.validate_json(value) if value is not None else []


async def write_allowlist(conn: AsyncConnection, rules: list[AllowRule]) -> None:
    await conn.execute(delete(platform_settings).where(platform_settings.c.key == ALLOWLIST_KEY))
    await conn.execute(
        insert(platform_settings).values(key=ALLOWLIST_KEY, value=RULES.dump_json(rules).decode())
    )
