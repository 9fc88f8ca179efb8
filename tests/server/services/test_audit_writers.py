"""Two platform processes appending to one audit chain (a split platform, docs/adr/0044).

Each writer is a real OS process with its own engine and its own AuditLog on the same database
and data directory: the chain must come out whole, and the signed checkpoint must be the newest
head, never an older one put back by a slower writer.
"""

import asyncio
import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.store.db import create_engine

APPENDS = 40


def _append(db_url: str, data: str, writer: str) -> None:
    async def main() -> None:
        engine = create_engine(db_url)
        signer = CheckpointSigner(Path(data) / "audit.key", Path(data) / "audit-anchor.json")
        audit = AuditLog(engine, signer)

        async def one(i: int) -> None:
            await audit.record("test.event", actor=writer, target=f"n:{i}")

        # Several appends in flight at once in each process, as a busy platform has.
        for start in range(0, APPENDS, 4):
            await asyncio.gather(*(one(i) for i in range(start, start + 4)))
        signer.close()
        await engine.dispose()

    asyncio.run(main())


async def test_an_append_waits_while_another_writer_holds_the_anchor(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The mechanism itself: a second writer (own signer, own lock file handle, as another
    process has) does not read the head until the first has published its checkpoint."""
    CheckpointSigner.create_key(tmp_path / "audit.key")
    first = CheckpointSigner(tmp_path / "audit.key", tmp_path / "audit-anchor.json")
    second = CheckpointSigner(tmp_path / "audit.key", tmp_path / "audit-anchor.json")
    try:
        async with first.writing():
            append = asyncio.create_task(
                AuditLog(engine, second).record("test.event", actor="other")
            )
            await asyncio.sleep(0.2)
            assert not append.done()
        record = await asyncio.wait_for(append, 5)
        assert record.seq == 1
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
async def test_two_processes_append_one_chain_and_the_anchor_stays_newest(
    postgres_db_url: str, tmp_path: Path
) -> None:
    db_url = postgres_db_url
    CheckpointSigner.create_key(tmp_path / "audit.key")
    spawn = multiprocessing.get_context("spawn")
    writers = [
        spawn.Process(target=_append, args=(db_url, str(tmp_path), name)) for name in ("api", "gw")
    ]
    for process in writers:
        process.start()
    for process in writers:
        await asyncio.to_thread(process.join, 120)
        assert process.exitcode == 0

    engine = create_engine(db_url)
    signer = CheckpointSigner(tmp_path / "audit.key", tmp_path / "audit-anchor.json")
    try:
        report = await AuditLog(engine, signer).verify()
        assert report.intact, report.problem
        assert report.records == 2 * APPENDS
        # The anchor is the last head: no writer published an older checkpoint after a newer one.
        assert report.checkpoint_seq == 2 * APPENDS
        actors = {r.actor async for r in AuditLog(engine, signer).iter_records()}
        assert actors == {"api", "gw"}
    finally:
        signer.close()
        await engine.dispose()
