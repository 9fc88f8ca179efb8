"""Group commit: one statement for every caller that arrived while the previous one ran."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalesced(Generic[T, R]):
    """Runs `run` over every item submitted while the previous run was in progress.

    A reconnect storm brings thousands of agents within seconds, each needing its certificate
    looked up, its hello stored and its policy read: database round trips per connection, on the
    one event loop that also does every TLS handshake (DESIGN.md section 9, 10,000 agents back
    within 30 s). Each caller still awaits the run that covered its own item, and that run starts
    after the item was submitted, so nothing is admitted before its lookup, nothing is reported
    stored early, and nothing read is older than the call that asked for it.
    """

    def __init__(self, run: Callable[[dict[str, T]], Awaitable[R]]) -> None:
        self._run = run
        self._queued: dict[str, T] = {}
        self._result: asyncio.Future[R] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, key: str, item: T) -> R:
        self._queued[key] = item
        if self._result is None:
            self._result = asyncio.get_running_loop().create_future()
        result = self._result
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        # Shielded: a caller that goes away must not cancel the statement the others wait for.
        return await asyncio.shield(result)

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, {}
            result, self._result = self._result, None
            assert result is not None
            try:
                value = await self._run(batch)
            except Exception as exc:
                result.set_exception(exc)
                result.exception()  # every waiter sees it; none is obliged to
            else:
                result.set_result(value)
