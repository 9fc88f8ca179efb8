"""Blocking file work in worker threads, safe against the caller being cancelled.

`asyncio.to_thread` cannot stop a thread: when the awaiting task is cancelled (a connection
dropped mid-write) the call goes on writing, hashing, using its file descriptor. `ThreadWork`
keeps every such call tracked, so the owner can wait for all of them before it closes the
descriptor or reads the state they change.
"""

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _retrieve(future: "asyncio.Future[Any]") -> None:
    # Marks the outcome as seen: nobody may be left awaiting a call whose caller was cancelled.
    if not future.cancelled():
        future.exception()


class ThreadWork:
    """Runs blocking calls in threads and can wait until none is running."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a thread; it runs to its end even if the caller is cancelled."""
        future = asyncio.ensure_future(asyncio.to_thread(function, *args))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        future.add_done_callback(_retrieve)
        return await asyncio.shield(future)

    async def idle(self) -> None:
        """Wait until every call started so far has finished (their errors are not raised)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
