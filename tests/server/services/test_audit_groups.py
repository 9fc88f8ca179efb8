"""Group commit of records written on their own (docs/adr/0053).

Concurrent `AuditLog.record` calls share transactions and signed checkpoints; each caller still
returns only once its own record is committed, and a group that fails fails only its own callers.
"""

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.errors import Unavailable
from tether.server.services.audit import GROUP_LIMIT, AuditLog, AuditTransaction
from tether.server.services.checkpoints import Checkpoint, CheckpointSigner

from ..support import TickingClock


async def test_concurrent_records_are_committed_in_groups_and_each_is_on_record(
    engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    published: list[Checkpoint] = []
    signer.add_listener(published.append)
    stored = await asyncio.gather(
        *(audit.record("test.event", actor=f"a{i}", target=f"t{i}") for i in range(200))
    )
    # Every caller got its own record, in one unbroken chain.
    assert sorted(r.seq for r in stored) == list(range(1, 201))
    assert [r.actor for r in stored] == [f"a{i}" for i in range(200)]
    for record in stored:
        assert await audit.record_at(record.seq) == record
    # Far fewer signed checkpoints than records: the head is signed once per group.
    assert 1 <= len(published) < 20
    assert published[-1].seq == 200
    report = await audit.verify()
    assert report.intact, report.problem
    assert report.records == 200
    assert report.checkpoint_seq == 200


async def test_a_caller_returns_only_once_its_record_is_committed(
    engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    first = asyncio.create_task(audit.record("test.event", actor="a"))
    record = await audit.record("test.event", actor="b")
    await first
    # Read by another log object on a connection of its own: what the caller was given is
    # already committed.
    assert await AuditLog(engine, signer).record_at(record.seq) == record


async def test_a_failed_group_fails_its_callers_and_the_next_group_is_written(
    engine: AsyncEngine, signer: CheckpointSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    await audit.record("test.before", actor="x")
    real_flush = AuditTransaction.flush
    failures = {"left": 1}

    async def flaky_flush(self: AuditTransaction) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise Unavailable("The database refused the write.")
        await real_flush(self)

    monkeypatch.setattr(AuditTransaction, "flush", flaky_flush)
    outcomes = await asyncio.gather(
        *(audit.record("test.event", actor=f"a{i}") for i in range(5)), return_exceptions=True
    )
    # The whole first group was refused with the one sentence; nothing of it was written.
    refused = [o for o in outcomes if isinstance(o, Unavailable)]
    assert refused
    assert all(str(o) == "The database refused the write." for o in refused)
    written = [o for o in outcomes if not isinstance(o, BaseException)]
    after = await audit.record("test.after", actor="y")
    records = [r async for r in audit.iter_records()]
    assert [r.action for r in records] == (
        ["test.before"] + ["test.event"] * len(written) + ["test.after"]
    )
    assert after.seq == 2 + len(written)
    assert (await audit.verify()).intact


async def test_a_record_with_bad_details_fails_only_its_own_caller(
    engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    good = asyncio.create_task(audit.record("test.good", actor="a"))
    with pytest.raises(TypeError):
        await audit.record("test.bad", actor="b", details={"x": object()})
    assert (await good).action == "test.good"
    assert [r.action async for r in audit.iter_records()] == ["test.good"]


async def test_a_caller_that_gives_up_still_leaves_its_record(
    engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    async with audit.transaction() as tx:
        # The lock is held: the record waits for its group, and its caller gives up.
        waiting = asyncio.create_task(audit.record("test.abandoned", actor="a"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await tx.record("test.in_transaction", actor="b")
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The action it describes happened: its record is written all the same.
    for _ in range(100):
        actions = [r.action async for r in audit.iter_records()]
        if len(actions) == 2:
            break
        await asyncio.sleep(0.02)
    assert actions == ["test.in_transaction", "test.abandoned"]


async def test_a_burst_larger_than_a_group_is_split(
    engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    published: list[Checkpoint] = []
    signer.add_listener(published.append)
    count = GROUP_LIMIT + 10
    stored = await asyncio.gather(*(audit.record("test.event", actor="a") for _ in range(count)))
    assert sorted(r.seq for r in stored) == list(range(1, count + 1))
    assert len(published) >= 2
    assert (await audit.verify()).intact


async def test_recording_inside_an_open_transaction_of_the_same_task_is_refused(
    engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    audit = AuditLog(engine, signer, clock=TickingClock())
    with pytest.raises(RuntimeError, match="already open"):
        async with audit.transaction():
            await audit.record("test.nested", actor="a")
