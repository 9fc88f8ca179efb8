"""Jobs for the page tests, without agents: submitted as the first admin, moved through their
states as an agent's reports would move them."""

from sqlalchemy import update

from tether.server.services.jobs import JobView, Selection
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.store.db import utcnow
from tether.server.store.tables import jobs

# The first admin (user id 1): admin and responder, second factor passed.
ADMIN = User(1, "admin", frozenset({"admin", "script"}), False, mfa_verified=True)


async def submit(platform: Platform, host: str, action: str = "system.noop") -> JobView:
    batch = await platform.jobs.submit(ADMIN, action, {}, Selection(host_ids=[host]), source="test")
    return batch.jobs[0]


async def set_state(platform: Platform, job_id: str, state: str) -> None:
    """Move a job as its agent would have (the hosts here have no agent)."""
    now = utcnow()
    values: dict[str, object] = {"state": state, "sent_at": now, "delivered_at": now}
    if state == "running":
        values["started_at"] = now
    if state in ("succeeded", "failed"):
        values["finished_at"] = now
    async with platform.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
