"""The bus between platform processes, over Redis publish/subscribe.

Pub/sub delivers to whoever listens at that moment and nothing else: a process that was
disconnected missed what was said meanwhile. That is acceptable because each message only says
"look again" (services/bus.py): after every reconnect the bus calls its resync handlers, which
re-read the database, and the receivers' own sweeps cover a message lost without a reconnect. A
half-open connection can go silent without an error (DESIGN.md section 10, known traps), so the
listener pings on a quiet connection and treats a ping that does not come back as a disconnect.
"""

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tether.server.errors import ConfigurationError
from tether.server.services.bus import Bus, Responder, Topic

log = logging.getLogger(__name__)

# Ids per message: a fan-out to 10,000 hosts is ten messages, none of them megabytes.
_IDS_PER_MESSAGE = 1000
# A quiet subscription is pinged this often; no answer within the timeout means reconnect.
_PING_SECONDS = 5.0
_TIMEOUT_SECONDS = 5.0
# How long to wait before reconnecting after a failure (doubles up to the ceiling).
_RETRY_SECONDS = 0.5
_RETRY_CEILING = 5.0
# Hints (job output) are gathered this long and sent as one message per topic.
_HINT_SECONDS = 0.02


class RedisBus(Bus):
    """Publishes to one Redis channel per platform (`prefix` + "wake") and hands what the other
    processes publish to this process's subscribers."""

    def __init__(
        self, url: str, *, prefix: str = "tether:", node: str | None = None, inline: bool = False
    ) -> None:
        super().__init__()
        self._url = url
        # A node of role all among several (docs/adr/0050) also acts on its own messages, at
        # once and in the caller's task, as the single process's LocalBus does: its own agents
        # and followers are served as before, the other nodes through Redis.
        self._inline = inline
        self.channel = f"{prefix}wake"
        # Messages this process sent come back to it too; it has acted on them already.
        self.node = node or uuid.uuid4().hex
        # Named, so an operator (or a test) can tell this platform's connections apart.
        self.client_name = f"{prefix}bus-{self.node}"
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=_TIMEOUT_SECONDS,
            socket_connect_timeout=_TIMEOUT_SECONDS,
            client_name=self.client_name,
        )
        self._listener: asyncio.Task[None] | None = None
        self._hinter: asyncio.Task[None] | None = None
        self._hints: dict[Topic, set[str]] = {}
        self._hinted = asyncio.Event()
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def spans_processes(self) -> bool:
        return True

    async def start(self) -> None:
        """Check that Redis answers (a clear error at start beats silence later), then listen."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise ConfigurationError(
                f"The Redis bus at {self._shown_url()} does not answer ({exc}); start it or fix "
                "redis_url."
            ) from exc
        self._listener = asyncio.create_task(self._listen())
        self._hinter = asyncio.create_task(self._send_hints())
        async with asyncio.timeout(_TIMEOUT_SECONDS):
            await self.connected.wait()

    async def close(self) -> None:
        for task in (self._listener, self._hinter, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._client.aclose()

    async def publish(self, topic: Topic, ids: Sequence[str]) -> None:
        wanted = list(ids)
        chunks = [
            wanted[start : start + _IDS_PER_MESSAGE]
            for start in range(0, len(wanted), _IDS_PER_MESSAGE)
        ] or [[]]
        try:
            for chunk in chunks:
                await self._client.publish(self.channel, self._encode(topic, chunk))
        except (RedisError, OSError) as exc:
            # The change is committed; the other processes find it on their next sweep.
            log.warning(
                "Could not publish %s on the bus (%s); receivers catch up later.", topic, exc
            )
        if self._inline:
            here = tuple(wanted)
            for handler in self.handlers(topic):
                await handler(here)

    async def ask(
        self,
        topic: Topic,
        ids: Sequence[str],
        *,
        timeout: float,
        enough: Callable[[list[str]], bool],
    ) -> list[str]:
        """Publish the question with a reply channel of its own and read the answers there;
        subscribed before publishing, so no answer can come before anyone listens."""
        reply = f"{self.channel}:reply:{uuid.uuid4().hex}"
        lines: list[str] = []
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(reply)
            body = json.loads(self._encode(topic, list(ids)))
            await self._client.publish(self.channel, json.dumps({**body, "r": reply}))
            deadline = asyncio.get_running_loop().time() + timeout
            while not enough(lines):
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                message = await pubsub.get_message(timeout=min(left, 1.0))
                if message is None or message.get("type") != "message":
                    continue
                with contextlib.suppress(ValueError, TypeError):
                    lines += [str(line) for line in json.loads(message["data"])]
        except (RedisError, OSError) as exc:
            log.warning("Could not ask %s on the bus (%s).", topic, exc)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        return lines

    def hint(self, topic: Topic, ident: str) -> None:
        self._hints.setdefault(topic, set()).add(ident)
        self._hinted.set()

    def _encode(self, topic: Topic, ids: list[str]) -> str:
        return json.dumps({"o": self.node, "t": str(topic), "i": ids}, separators=(",", ":"))

    def _shown_url(self) -> str:
        # Never a password in a log line or an error.
        pool: Any = self._client.connection_pool
        kwargs = pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    async def _send_hints(self) -> None:
        while True:
            await self._hinted.wait()
            await asyncio.sleep(_HINT_SECONDS)
            self._hinted.clear()
            hints, self._hints = self._hints, {}
            for topic, ids in hints.items():
                await self.publish(topic, sorted(ids))

    async def _listen(self) -> None:
        delay = _RETRY_SECONDS
        first = True
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                delay = _RETRY_SECONDS
                if not first:
                    log.info("Bus connection back; re-reading what messages may have said.")
                    await self._resync()
                first = False
                await self._receive(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self.connected.clear()
                log.warning("Bus connection lost (%s); reconnecting in %.1f s.", exc, delay)
            except Exception:
                self.connected.clear()
                log.exception("The bus listener failed; reconnecting in %.1f s.", delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_CEILING)

    async def _receive(self, pubsub: Any) -> None:
        quiet = 0.0
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                quiet += 1.0
                if quiet >= _PING_SECONDS:
                    # A silent half-open connection raises here instead of waiting forever.
                    async with asyncio.timeout(_TIMEOUT_SECONDS):
                        await pubsub.ping()
                    quiet = 0.0
                continue
            quiet = 0.0
            if message.get("type") != "message":
                continue
            self._deliver(message["data"])

    def _deliver(self, data: bytes | str) -> None:
        try:
            body = json.loads(data)
            topic = Topic(body["t"])
            ids = tuple(str(i) for i in body["i"])
            origin = str(body["o"])
        except (ValueError, KeyError, TypeError):
            log.warning("Ignored a bus message that is not a wake-up.")
            return
        if origin == self.node:
            return
        reply = body.get("r")
        if isinstance(reply, str):
            for responder in self.responders(topic):
                task = asyncio.create_task(self._answer(topic, responder, ids, reply))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        for handler in self.handlers(topic):
            # Each handler reads the database; one slow handler must not hold the listener.
            task = asyncio.create_task(self._run(topic, handler, ids))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, topic: Topic, responder: Responder, ids: tuple[str, ...], reply: str
    ) -> None:
        try:
            lines = await responder(ids)
            if lines:
                await self._client.publish(reply, json.dumps(lines))
        except Exception:
            log.exception("A bus responder for %s failed; the asker times out.", topic)

    @staticmethod
    async def _run(topic: Topic, handler: Any, ids: tuple[str, ...]) -> None:
        try:
            await handler(ids)
        except Exception:
            log.exception("A bus handler for %s failed; the next sweep catches up.", topic)
