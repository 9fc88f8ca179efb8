"""A transfer's progress, written to its job's row about once a second and read back by every
view of the job (the pages, the API, `tether get`)."""

import asyncio
import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.transfer_engine import Progress
from tether.server.services.audit import AuditLog
from tether.server.services.transfer_progress import TransferProgress
from tether.server.store.tables import jobs

from .test_jobs import Harness

MiB = 1024 * 1024


def moving(done: int, size: int, rate: float = 0.0) -> Progress:
    return Progress(uuid.uuid4(), "get", size, done=done, rate=rate)


async def test_progress_reaches_the_job_and_its_view(engine: AsyncEngine, audit: AuditLog) -> None:
    h = Harness(engine, audit)
    host = await h.host("web-1")
    await h.connect(host)
    (job,) = (await h.submit([host], "files.get", args={"path": "/evidence/memory.dmp"})).jobs
    assert (await h.jobs.get(job.id)).transfer_bytes is None
    progress = TransferProgress(engine, interval=60)
    progress.note(job.id, moving(1 * MiB, 10 * MiB))
    progress.note(job.id, moving(3 * MiB, 10 * MiB, rate=2.5 * MiB))  # only the latest is kept
    await progress.close()
    view = await h.jobs.get(job.id)
    assert (view.transfer_bytes, view.transfer_size, view.transfer_rate) == (
        3 * MiB,
        10 * MiB,
        2.5 * MiB,
    )
    assert view.transfer_at is not None


async def test_the_last_bytes_are_written_at_once(engine: AsyncEngine, audit: AuditLog) -> None:
    h = Harness(engine, audit)
    host = await h.host("web-1")
    (job,) = (await h.submit([host], "files.get", args={"path": "/evidence/memory.dmp"})).jobs
    # A long interval: only the immediate write for a finished transfer can land in time.
    progress = TransferProgress(engine, interval=60)
    progress.note(job.id, moving(10 * MiB, 10 * MiB))
    for _ in range(200):
        if (await h.jobs.get(job.id)).transfer_bytes == 10 * MiB:
            break
        await asyncio.sleep(0.01)
    assert (await h.jobs.get(job.id)).transfer_bytes == 10 * MiB
    await progress.close()


async def test_a_succeeded_job_shows_its_file_moved_whole(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    """The last progress write can lose the race with the job's ending: a verified, succeeded
    transfer is shown whole, a failed one as far as it got."""
    h = Harness(engine, audit)
    host = await h.host("web-1")
    ok, failed = (
        await h.submit(
            [host, await h.host("web-2")], "files.get", args={"path": "/evidence/memory.dmp"}
        )
    ).jobs
    progress = TransferProgress(engine, interval=60)
    progress.note(ok.id, moving(7 * MiB, 10 * MiB))
    progress.note(failed.id, moving(7 * MiB, 10 * MiB))
    await progress.close()
    async with engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == ok.id).values(state="succeeded"))
        await conn.execute(update(jobs).where(jobs.c.id == failed.id).values(state="failed"))
    assert (await h.jobs.get(ok.id)).transfer_bytes == 10 * MiB
    assert (await h.jobs.get(failed.id)).transfer_bytes == 7 * MiB


async def test_progress_for_a_job_that_does_not_exist_changes_nothing(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    h = Harness(engine, audit)
    host = await h.host("web-1")
    (job,) = (await h.submit([host], "files.get", args={"path": "/evidence/memory.dmp"})).jobs
    progress = TransferProgress(engine, interval=60)
    progress.note("no-such-job", moving(1, 2))
    progress.note(job.id + "' OR '1'='1", moving(1, 2))
    await progress.close()
    async with engine.connect() as conn:
        rows = (await conn.execute(select(jobs.c.transfer_bytes))).scalars().all()
    assert rows == [None]
