"""Wake-ups for whoever waits on a job in this process: new output, a new state.

Only a hint, like the bus between processes (DESIGN.md section 1): a waiter re-reads the
database when woken and also after a short timeout, so a wake-up lost, or one that happened in
another platform process, delays an answer by at most that timeout and never loses it.
"""

import asyncio
import contextlib
from collections.abc import Sequence

from tether.server.services.bus import Bus, Topic


class JobEvents:
    def __init__(self, bus: Bus | None = None) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        # Other processes' followers hear of it through the bus (docs/adr/0044).
        self._bus = bus
        if bus is not None:
            bus.subscribe(Topic.JOBS_CHANGED, self.wake)

    def notify(self, job_id: str) -> None:
        """Wake this process's waiters on `job_id` now, and other processes' soon."""
        self._wake_one(job_id)
        if self._bus is not None:
            self._bus.hint(Topic.JOBS_CHANGED, job_id)

    async def wake(self, job_ids: Sequence[str]) -> None:
        """Wake this process's waiters on `job_ids` (another process changed them)."""
        for job_id in job_ids:
            self._wake_one(job_id)

    def _wake_one(self, job_id: str) -> None:
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
