"""The wake-up bus: inline in one process, over Redis between processes (docs/adr/0044)."""

import asyncio

import pytest
import redis.asyncio as aioredis

from tether.server.errors import ConfigurationError
from tether.server.services.bus import Topic
from tether.server.services.buses.local import LocalBus
from tether.server.services.buses.redis import RedisBus
from tether.server.services.job_events import JobEvents


class Heard:
    def __init__(self) -> None:
        self.ids: list[tuple[str, ...]] = []
        self.changed = asyncio.Event()

    async def __call__(self, ids: tuple[str, ...]) -> None:
        self.ids.append(ids)
        self.changed.set()

    async def next(self, timeout: float = 5.0) -> tuple[str, ...]:
        async with asyncio.timeout(timeout):
            while not self.ids:
                self.changed.clear()
                await self.changed.wait()
        return self.ids.pop(0)


async def test_the_local_bus_calls_subscribers_inline_and_lets_their_errors_through() -> None:
    bus = LocalBus()
    heard = Heard()
    bus.subscribe(Topic.JOBS_READY, heard)
    await bus.publish(Topic.JOBS_READY, ["j1", "j2"])
    # Already called when publish returns: the same as the direct call it replaces.
    assert heard.ids == [("j1", "j2")]
    bus.hint(Topic.JOBS_CHANGED, "j1")  # for other processes only: nothing here

    async def broken(ids: tuple[str, ...]) -> None:
        raise RuntimeError("boom")

    bus.subscribe(Topic.HOSTS_REVOKED, broken)
    with pytest.raises(RuntimeError):
        await bus.publish(Topic.HOSTS_REVOKED, ["h"])


async def test_a_wake_up_reaches_the_other_process_and_not_its_sender(
    redis_url: str, bus_prefix: str
) -> None:
    api, gateway = RedisBus(redis_url, prefix=bus_prefix), RedisBus(redis_url, prefix=bus_prefix)
    at_api, at_gateway = Heard(), Heard()
    api.subscribe(Topic.JOBS_READY, at_api)
    gateway.subscribe(Topic.JOBS_READY, at_gateway)
    await api.start()
    await gateway.start()
    try:
        await api.publish(Topic.JOBS_READY, ["job-1"])
        assert await at_gateway.next() == ("job-1",)
        # A fan-out's ids go in bounded messages, all of them arriving.
        ids = [f"j{i}" for i in range(2500)]
        await api.publish(Topic.JOBS_READY, ids)
        got = [await at_gateway.next() for _ in range(3)]
        assert [i for chunk in got for i in chunk] == ids
        # Hints are coalesced: many notifications of one job, one message.
        for _ in range(50):
            gateway.hint(Topic.JOBS_READY, "job-7")
        assert await at_api.next() == ("job-7",)
        await asyncio.sleep(0.1)
        assert at_api.ids == []
        assert at_gateway.ids == []  # nobody hears its own messages
    finally:
        await api.close()
        await gateway.close()


async def test_a_dropped_connection_reconnects_and_asks_for_a_resync(
    redis_url: str, bus_prefix: str
) -> None:
    bus, sender = RedisBus(redis_url, prefix=bus_prefix), RedisBus(redis_url, prefix=bus_prefix)
    heard = Heard()
    resynced = asyncio.Event()

    async def resync() -> None:
        resynced.set()

    bus.subscribe(Topic.POLICY_CHANGED, heard)
    bus.on_resync(resync)
    await bus.start()
    await sender.start()
    admin = aioredis.Redis.from_url(redis_url)
    try:
        # Kill only this bus's subscription (by its name), as a broken network would.
        clients = await admin.client_list()
        mine = [c["id"] for c in clients if c.get("name") == bus.client_name and "P" in c["flags"]]
        assert mine, "the bus's subscription is not among Redis's clients"
        for client_id in mine:
            await admin.client_kill_filter(_id=client_id)
        async with asyncio.timeout(10):
            await resynced.wait()
        await sender.publish(Topic.POLICY_CHANGED, [])
        assert await heard.next() == ()
    finally:
        await admin.aclose()
        await bus.close()
        await sender.close()


async def test_publishing_without_redis_logs_instead_of_failing(bus_prefix: str) -> None:
    # The change is committed before the publish: a bus that is down only delays the effect.
    bus = RedisBus("redis://127.0.0.1:1/0", prefix=bus_prefix)
    await bus.publish(Topic.JOBS_READY, ["j"])
    with pytest.raises(
        ConfigurationError, match=r"The Redis bus at 127\.0\.0\.1:1 does not answer"
    ):
        await bus.start()
    await bus.close()


async def test_a_follower_in_one_process_is_woken_by_output_stored_in_another(
    redis_url: str, bus_prefix: str
) -> None:
    api, gateway = RedisBus(redis_url, prefix=bus_prefix), RedisBus(redis_url, prefix=bus_prefix)
    followers, storer = JobEvents(api), JobEvents(gateway)
    await api.start()
    await gateway.start()
    try:
        waiting = asyncio.create_task(followers.wait(["job-1"], timeout=5))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        storer.notify("job-1")
        assert await waiting is True  # woken, not timed out
        assert asyncio.get_running_loop().time() - started < 1
    finally:
        await api.close()
        await gateway.close()


async def test_a_question_is_answered_by_the_process_that_can(
    redis_url: str, bus_prefix: str
) -> None:
    api = RedisBus(redis_url, prefix=bus_prefix)
    holder, other = RedisBus(redis_url, prefix=bus_prefix), RedisBus(redis_url, prefix=bus_prefix)

    async def holds_h1(ids: tuple[str, ...]) -> list[str]:
        return [f"{i}\t1.5" for i in ids if i == "h1"]

    async def holds_nothing(ids: tuple[str, ...]) -> list[str]:
        return []

    holder.respond(Topic.PING, holds_h1)
    other.respond(Topic.PING, holds_nothing)
    for bus in (api, holder, other):
        await bus.start()
    try:
        started = asyncio.get_running_loop().time()
        lines = await api.ask(Topic.PING, ["h1"], timeout=5, enough=lambda got: len(got) >= 1)
        assert lines == ["h1\t1.5"]
        assert asyncio.get_running_loop().time() - started < 2  # done when enough, not at 5 s
        # Nobody holds h2: the question times out with nothing, it does not hang.
        assert await api.ask(Topic.PING, ["h2"], timeout=0.5, enough=lambda got: bool(got)) == []
    finally:
        for bus in (api, holder, other):
            await bus.close()


async def test_a_node_of_several_acts_on_its_own_wake_ups_at_once_and_wakes_the_others(
    redis_url: str, bus_prefix: str
) -> None:
    # Role all among several nodes (docs/adr/0050): its own agents are served in the caller's
    # task, as in one process, and the other node hears the same message once.
    a = RedisBus(redis_url, prefix=bus_prefix, inline=True)
    b = RedisBus(redis_url, prefix=bus_prefix, inline=True)
    at_a, at_b = Heard(), Heard()
    a.subscribe(Topic.JOBS_READY, at_a)
    b.subscribe(Topic.JOBS_READY, at_b)
    await a.start()
    await b.start()
    try:
        await a.publish(Topic.JOBS_READY, ["job-1"])
        assert at_a.ids == [("job-1",)]  # already, before publish returned
        assert await at_b.next() == ("job-1",)
        await asyncio.sleep(0.1)
        assert at_a.ids == [("job-1",)]  # its own message, coming back, is not acted on twice
        assert at_b.ids == []
    finally:
        await a.close()
        await b.close()
