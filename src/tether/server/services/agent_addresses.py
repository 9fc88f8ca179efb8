"""The platform's agent ports as agents should dial them: a list an admin keeps (docs/adr/0049).

Enrollment hands the list to the agent and every welcome repeats it, so a node added later
reaches agents enrolled before it. Stored in the database (`platform_settings`), so every node
of a platform hands out the same list; empty means "the address in the enrollment token"
(`Settings.agent_url`), which is what a single-node platform needs.
"""

import json
import re
import time

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import MAX_AGENT_ADDRESSES
from tether.server.errors import Invalid
from tether.server.services.audit import AuditLog
from tether.server.store.tables import platform_settings

KEY = "agent_addresses"
# HOST:PORT with a DNS name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>\d{1,5})$"
)
# A welcome per connection must not be a database read per connection (10,000 in a restart):
# the list is read at most this often, so a change reaches the other nodes within it.
CACHE_SECONDS = 10.0


def check_address(text: str) -> str:
    """`text` as HOST:PORT, or Invalid with one sentence saying why not."""
    value = text.strip()
    found = _HOST_PORT.match(value)
    if found is None or not 0 < int(found.group("port")) < 65536:
        raise Invalid(
            f"{text!r} is not an agent address; write HOST:PORT, e.g. tether1.example.com:8444."
        )
    return value


def check_addresses(values: list[str]) -> list[str]:
    """The list checked, duplicates dropped (first kept), at most MAX_AGENT_ADDRESSES."""
    addresses = list(dict.fromkeys(check_address(v) for v in values))
    if len(addresses) > MAX_AGENT_ADDRESSES:
        raise Invalid(f"At most {MAX_AGENT_ADDRESSES} agent addresses can be listed.")
    return addresses


def as_url(address: str) -> str:
    return f"wss://{address}"


async def read_addresses(conn: AsyncConnection) -> list[str]:
    value = (
        await conn.execute(select(platform_settings.c.value).where(platform_settings.c.key == KEY))
    ).scalar()
    if value is None:
        return []
    stored = json.loads(value)
    return [str(a) for a in stored] if isinstance(stored, list) else []


async def write_addresses(conn: AsyncConnection, addresses: list[str]) -> None:
    await conn.execute(delete(platform_settings).where(platform_settings.c.key == KEY))
    if addresses:
        await conn.execute(insert(platform_settings).values(key=KEY, value=json.dumps(addresses)))


class AgentAddresses:
    """Reads and changes the list; each change is audited."""

    def __init__(self, engine: AsyncEngine, audit: AuditLog, enrolled_url: str) -> None:
        self._engine = engine
        self._audit = audit
        # What agents dial when no list is set: the address in enrollment tokens.
        self._enrolled_url = enrolled_url
        self._cached: tuple[str, ...] | None = None
        self._read_at = 0.0

    async def get(self) -> list[str]:
        """The list as set (HOST:PORT), empty when none is."""
        async with self._engine.connect() as conn:
            return await read_addresses(conn)

    async def urls(self) -> tuple[str, ...]:
        """What agents dial: the list as wss:// URLs, or the enrolled address."""
        return await self.listed_urls() or (self._enrolled_url,)

    async def listed_urls(self) -> tuple[str, ...]:
        """The list as wss:// URLs, empty when none is set: what enrollment and every welcome
        hand to agents. Never this node's own address in its place: behind a load balancer that
        would send every agent past the balancer to the node it happened to reach, and leave
        it there when that node dies (seen in the failover test)."""
        now = time.monotonic()
        if self._cached is None or now - self._read_at > CACHE_SECONDS:
            self._cached = tuple(as_url(a) for a in await self.get())
            self._read_at = now
        return self._cached

    async def update(self, values: list[str], *, actor: str, source: str) -> list[str]:
        addresses = check_addresses(values)
        async with self._audit.transaction() as tx:
            before = await read_addresses(tx.conn)
            await write_addresses(tx.conn, addresses)
            if before != addresses:
                await tx.record(
                    "settings.change",
                    actor=actor,
                    source=source,
                    details={"agent_addresses": addresses, "previous_agent_addresses": before},
                )
        self._cached = None
        return addresses
