"""Wake-ups for whoever waits on a job in this process: new output, a new state.

Only a hint, like the bus between processes (DESIGN.md section 1): a waiter re-reads the
database when woken and also after a short timeout, so a wake-up lost, or one that happened in
another platform process, delays an answer by at most that timeout and never loses it.
"""

import asyncio
import contextlib


class JobEvents:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def notify(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def wait(self, job_ids: list[str], timeout: float) -> bool:
        """Wait until one of `job_ids` changes or `timeout` passes; True if woken."""
        event = asyncio.Event()
        for job_id in job_ids:
            self._waiters.setdefault(job_id, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
            return event.is_set()
        finally:
            for job_id in job_ids:
                waiting = self._waiters.get(job_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[job_id]
