"""How far each file transfer is, written to its job's row for people watching (docs/adr/0054).

The transfer engine reports bytes and rate at every acknowledgement (every eighth of a window,
~1 MiB); this keeps the latest per job and writes them about once a second, one UPDATE per
moving job, so the job page, the Host page and `tether get` show the transfer live whichever
platform process serves them. A lost write only delays the figure: the next one carries it.
"""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.transfer_engine import Progress
from tether.server.store.tables import jobs

log = logging.getLogger(__name__)

WRITE_INTERVAL_SECONDS = 1.0


class TransferProgress:
    """The latest progress of each moving transfer, flushed to the jobs table once a second."""

    def __init__(self, engine: AsyncEngine, *, interval: float = WRITE_INTERVAL_SECONDS) -> None:
        self._engine = engine
        self._interval = interval
        self._pending: dict[str, tuple[int, int, float]] = {}
        self._writer: asyncio.Task[None] | None = None

    def note(self, job_id: str, progress: Progress) -> None:
        """The transfer of `job_id` is at `progress` (called from the engine, never blocks)."""
        self._pending[job_id] = (progress.done, progress.size, progress.rate)
        if self._writer is None or self._writer.done():
            # The last bytes are written at once: the job's ending follows them closely.
            first = 0.0 if progress.done == progress.size else self._interval
            self._writer = asyncio.create_task(self._write_soon(first), name="transfer progress")

    async def _write_soon(self, first: float) -> None:
        delay = first
        while self._pending:
            await asyncio.sleep(delay)
            await self.flush()
            delay = self._interval

    async def flush(self) -> None:
        """Write what is pending now."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                for job_id, (done, size, rate) in pending.items():
                    await conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id)
                        .values(
                            transfer_bytes=done,
                            transfer_size=size,
                            transfer_rate=rate,
                            transfer_at=now,
                        )
                    )
        except SQLAlchemyError as exc:
            # A figure for people to watch: the next second's write carries it again.
            log.warning("Transfer progress was not written: %s", exc)

    async def close(self) -> None:
        """Write what is pending and stop."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.flush()
