"""Presence: live links in memory, last-seen times written in one batched statement."""

import asyncio
from datetime import datetime
from typing import Any, cast

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode
from tether.server.services.presence import Presence
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import hosts

from ..support import FakeLink, add_host


async def last_seen(engine: AsyncEngine) -> dict[str, datetime | None]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(hosts.c.id, hosts.c.last_seen))).all()
    return {r.id: as_utc(r.last_seen) for r in rows}


class StatementLog:
    """Every UPDATE of the hosts table sent to the database driver."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.updates: list[tuple[bool, int]] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE HOSTS"):
            self.updates.append((executemany, len(parameters) if executemany else 1))


async def test_touches_are_flushed_in_one_statement(engine: AsyncEngine) -> None:
    ids = [await add_host(engine, f"ws-{i}") for i in range(25)]
    presence = Presence(engine)
    log = StatementLog(engine)
    before = utcnow()
    for _ in range(3):  # several heartbeats from each host before a flush
        for host_id in ids:
            presence.touch(host_id)
    # Nothing is written before the flush...
    assert await last_seen(engine) == dict.fromkeys(ids)
    assert log.updates == []
    # ...but listings already see the touches.
    pending = presence.pending_last_seen(ids[0])
    assert pending is not None
    assert pending >= before
    assert await presence.flush() == 25
    assert log.updates == [(True, 25)]
    stored = await last_seen(engine)
    for host_id in ids:
        seen = stored[host_id]
        assert seen is not None
        assert seen >= before.replace(microsecond=0)
    assert presence.pending_last_seen(ids[0]) is None
    assert await presence.flush() == 0
    assert log.updates == [(True, 25)]


async def test_flush_writes_the_newest_touch(engine: AsyncEngine) -> None:
    host_id = await add_host(engine, "ws")
    presence = Presence(engine)
    presence.touch(host_id)
    first = presence.pending_last_seen(host_id)
    presence.touch(host_id)
    newest = presence.pending_last_seen(host_id)
    assert first is not None
    assert newest is not None
    assert newest >= first
    await presence.flush()
    assert (await last_seen(engine))[host_id] == newest


class UnreachableDatabase:
    """Stands in for an engine whose database has gone away."""

    def begin(self) -> Any:
        raise ConnectionError("the database went away")


async def test_failed_flush_keeps_the_touches() -> None:
    presence = Presence(cast(AsyncEngine, UnreachableDatabase()))
    presence.touch("h1")
    touched = presence.pending_last_seen("h1")
    with pytest.raises(ConnectionError):
        await presence.flush()
    assert presence.pending_last_seen("h1") == touched
    presence.touch("h2")
    with pytest.raises(ConnectionError):
        await presence.flush()
    assert presence.pending_last_seen("h1") == touched  # still there for the next attempt
    assert presence.pending_last_seen("h2") is not None


async def test_attach_detach_and_replacement(engine: AsyncEngine) -> None:
    presence = Presence(engine)
    first, second = FakeLink("h1"), FakeLink("h1")
    assert presence.attach(first) is None
    assert presence.is_online("h1")
    assert presence.count == 1
    assert presence.attach(second) is first
    assert presence.link("h1") is second
    presence.detach(first)  # the replaced link going away must not take the new one with it
    assert presence.link("h1") is second
    presence.detach(second)
    assert not presence.is_online("h1")
    assert presence.online_ids() == []
    assert presence.pending_last_seen("h1") is not None


async def test_disconnect_all(engine: AsyncEngine) -> None:
    presence = Presence(engine)
    links = [FakeLink(f"h{i}") for i in range(3)]
    for link in links:
        presence.attach(link)
    dropped = await presence.disconnect_all(CloseCode.GOING_AWAY, "restart", grace=1)
    assert dropped == 0
    assert all(link.closed == [(CloseCode.GOING_AWAY, "restart")] for link in links)
    assert not any(link.aborted for link in links)


class StuckLink(FakeLink):
    """A peer that never answers the close handshake."""

    async def disconnect(self, code: CloseCode, reason: str) -> None:
        self.closed.append((code, reason))
        await asyncio.Event().wait()


async def test_disconnect_all_drops_whoever_has_not_closed_within_the_grace(
    engine: AsyncEngine,
) -> None:
    presence = Presence(engine)
    prompt, stuck = FakeLink("prompt"), StuckLink("stuck")
    presence.attach(prompt)
    presence.attach(stuck)
    async with asyncio.timeout(5):
        dropped = await presence.disconnect_all(CloseCode.GOING_AWAY, "restart", grace=0.05)
    assert dropped == 1
    assert stuck.closed == [(CloseCode.GOING_AWAY, "restart")]  # the close frame was still sent
    assert stuck.aborted
    assert not prompt.aborted
