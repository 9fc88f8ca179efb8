"""Device segments: groups of hosts that share a response policy.

The access-control issue adds create/rename/delete and the Active Response switch to the API;
here a segment is created on first use by an enrollment token, audited, switch off.
"""

import re

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server.errors import Invalid
from tether.server.store.db import utcnow
from tether.server.store.tables import segments

SEGMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
DEFAULT_SEGMENT = "default"


def check_segment_name(name: str) -> str:
    if not SEGMENT_NAME.match(name):
        raise Invalid(
            "A segment name is 1 to 64 letters, digits, spaces, dots, dashes or underscores."
        )
    return name


async def ensure_segment(conn: AsyncConnection, name: str) -> tuple[int, bool]:
    """The id of segment `name`, creating it when missing; the flag says it was created."""
    check_segment_name(name)
    found = (await conn.execute(select(segments.c.id).where(segments.c.name == name))).scalar()
    if found is not None:
        return int(found), False
    try:
        async with conn.begin_nested():
            result = await conn.execute(
                insert(segments).values(name=name, active_response=False, created_at=utcnow())
            )
        return int(result.inserted_primary_key[0]), True  # type: ignore[index]
    except IntegrityError:
        found = (await conn.execute(select(segments.c.id).where(segments.c.name == name))).scalar()
        return int(found), False  # type: ignore[arg-type]
