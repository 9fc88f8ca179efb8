"""Two platform processes appending to one audit chain (a split platform, docs/adr/0044).

Each writer is a real OS process with its own engine and its own AuditLog on the same database
and data directory: the chain must come out whole, and the signed checkpoint must be the newest
head, never an older one put back by a slower writer.
"""

import asyncio
import itertools
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.store.db import create_engine

APPENDS = 80


async def _appends(db_url: str, data: str, writer: str) -> None:
    engine = create_engine(db_url)
    signer = CheckpointSigner(
        Path(data) / "audit.key", Path(data) / "audit-anchor.json", writer=writer
    )
    audit = AuditLog(engine, signer)

    async def one(i: int) -> None:
        await audit.record("test.event", actor=writer, target=f"n:{i}")

    # Both writers start together: each says it is ready, then waits for the word. Waiting for
    # the other's first record instead let a fast writer finish all of its appends before the
    # other began (group commit made appends that fast), and nothing interleaved.
    (Path(data) / f"ready-{writer}").touch()
    for _ in range(6000):
        if (Path(data) / "go").exists():
            break
        await asyncio.sleep(0.01)
    # Several appends in flight at once in each process, as a busy platform has, paced a little
    # so that the two processes' appends overlap in time.
    for start in range(0, APPENDS, 4):
        await asyncio.gather(*(one(i) for i in range(start, start + 4)))
        await asyncio.sleep(0.01)
    signer.close()
    await engine.dispose()


def _append(db_url: str, data: str, writer: str) -> None:
    asyncio.run(_appends(db_url, data, writer))


def test_each_writer_publishes_its_own_checkpoint_and_never_an_older_one(
    tmp_path: Path,
) -> None:
    """What two processes do to the anchor between their commits, step by step."""
    CheckpointSigner.create_key(tmp_path / "audit.key")
    anchor = tmp_path / "audit-anchor.json"
    api = CheckpointSigner(tmp_path / "audit.key", anchor, writer="api")
    gateway = CheckpointSigner(tmp_path / "audit.key", anchor, writer="gw")
    now = datetime.now(UTC)
    try:
        # Both prepared (both before their commits): the api's publish moves the api's own
        # checkpoint, never the gateway's, whose records may yet roll back.
        five = api.prepare(5, "a" * 64, now)
        six = gateway.prepare(6, "b" * 64, now)
        api.publish(five)
        assert api.latest() == five
        # The gateway commits and publishes; the api's next, slower publish of an older head
        # does not put the anchor back.
        gateway.publish(six)
        four = api.prepare(4, "c" * 64, now)
        api.publish(four)
        assert gateway.latest() == six
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "audit-anchor.json",
            "audit-anchor.json.lock",
            "audit.key",
        ]
    finally:
        api.close()
        gateway.close()


@pytest.mark.postgres
async def test_two_processes_append_one_chain_and_the_anchor_stays_newest(
    postgres_db_url: str, tmp_path: Path
) -> None:
    db_url = postgres_db_url
    CheckpointSigner.create_key(tmp_path / "audit.key")
    # The other process, and this one appending at the same time.
    gateway = multiprocessing.get_context("spawn").Process(
        target=_append, args=(db_url, str(tmp_path), "gw")
    )
    gateway.start()
    # Its interpreter takes seconds to start: the word is given once it is ready.
    for _ in range(600):
        if (tmp_path / "ready-gw").exists():
            break
        await asyncio.sleep(0.1)
    (tmp_path / "go").touch()
    await _appends(db_url, str(tmp_path), "api")
    await asyncio.to_thread(gateway.join, 120)
    assert gateway.exitcode == 0

    engine = create_engine(db_url)
    signer = CheckpointSigner(tmp_path / "audit.key", tmp_path / "audit-anchor.json")
    try:
        report = await AuditLog(engine, signer).verify()
        assert report.intact, report.problem
        assert report.records == 2 * APPENDS
        # The anchor is the last head: no writer published an older checkpoint after a newer one.
        assert report.checkpoint_seq == 2 * APPENDS
        actors = [r.actor async for r in AuditLog(engine, signer).iter_records()]
        assert set(actors) == {"api", "gw"}
        # The two processes' appends interleaved: they really wrote at the same time.
        switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
        assert switches >= 2, actors
    finally:
        signer.close()
        await engine.dispose()
