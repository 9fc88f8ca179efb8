"""The hash-chained audit log: intact chains verify; every kind of tampering is caught."""

import asyncio
import base64
import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.errors import ConfigurationError, Unavailable
from tether.server.services.audit import (
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    Checkpoint,
    CheckpointSigner,
    record_hash,
)
from tether.server.store.db import create_engine
from tether.server.store.tables import audit_head, audit_records

from ..support import TickingClock


async def fill(audit: AuditLog, count: int = 10) -> list[AuditRecord]:
    return [
        await audit.record(
            "test.event",
            actor=f"user{i}",
            target=f"host:{i}",
            source="127.0.0.1 pytest",
            details={"n": i, "text": "ünïcode ✓"},
        )
        for i in range(1, count + 1)
    ]


async def rows(engine: AsyncEngine) -> list[AuditRecord]:
    async with engine.connect() as conn:
        result = await conn.execute(select(audit_records).order_by(audit_records.c.seq))
        return [AuditRecord(**r._asdict()) for r in result]


async def set_head(engine: AsyncEngine, seq: int, head_hash: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(audit_head).values(seq=seq, hash=head_hash))


async def rewrite_from(engine: AsyncEngine, original: list[AuditRecord], seq: int) -> None:
    """What an attacker with database access does: change record `seq`, recompute the rest."""
    prev = GENESIS_HASH
    async with engine.begin() as conn:
        for rec in original:
            fields = {k: v for k, v in rec.__dict__.items() if k != "hash"}
            fields["prev_hash"] = prev
            if rec.seq == seq:
                fields["actor"] = "someone-else"
            new_hash = record_hash(**fields)
            await conn.execute(
                update(audit_records)
                .where(audit_records.c.seq == rec.seq)
                .values(actor=fields["actor"], prev_hash=prev, hash=new_hash)
            )
            prev = new_hash
        await conn.execute(update(audit_head).values(seq=original[-1].seq, hash=prev))


async def test_empty_log_is_intact(audit: AuditLog) -> None:
    report = await audit.verify()
    assert report.intact
    assert (report.records, report.head_seq, report.head_hash) == (0, 0, GENESIS_HASH)
    assert report.checkpoint_seq is None


async def test_records_form_a_chain_and_verify(
    audit: AuditLog, engine: AsyncEngine, signer: CheckpointSigner
) -> None:
    written = await fill(audit)
    assert [r.seq for r in written] == list(range(1, 11))
    assert written[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(written):
        assert after.prev_hash == before.hash
    assert await rows(engine) == written
    report = await audit.verify()
    assert report.intact, report.problem
    assert (report.records, report.head_seq, report.head_hash) == (10, 10, written[-1].hash)
    assert report.checkpoint_seq == 10
    assert report.first_bad_seq is None
    checkpoint = signer.latest()
    assert checkpoint is not None
    assert (checkpoint.seq, checkpoint.hash) == (10, written[-1].hash)
    assert signer.is_genuine(checkpoint)


async def test_hash_covers_every_field(audit: AuditLog) -> None:
    (rec,) = await fill(audit, 1)
    fields = {k: v for k, v in rec.__dict__.items() if k != "hash"}
    assert record_hash(**fields) == rec.hash
    for name in fields:
        changed = {**fields, name: fields[name] + 1 if name == "seq" else fields[name] + "x"}
        assert record_hash(**changed) != rec.hash, name


async def test_details_round_trip_and_long_fields_are_cut(audit: AuditLog) -> None:
    rec = await audit.record("a" * 100, actor="u" * 500, target="t" * 500, details={"b": 1, "a": 2})
    assert (len(rec.action), len(rec.actor), len(rec.target)) == (64, 128, 255)
    assert rec.details == '{"a":2,"b":1}'
    assert rec.to_json()["details"] == {"a": 2, "b": 1}
    assert (await audit.verify()).intact


async def test_iter_records_pages(audit: AuditLog) -> None:
    await fill(audit)
    assert [r.seq async for r in audit.iter_records(after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert [r.seq async for r in audit.iter_records(after_seq=8)] == [9, 10]
    assert [r.seq async for r in audit.iter_records(after_seq=10)] == []


async def test_edited_middle_record_is_caught(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit)
    async with engine.begin() as conn:
        await conn.execute(
            update(audit_records).where(audit_records.c.seq == 5).values(actor="mallory")
        )
    report = await audit.verify()
    assert not report.intact
    assert report.first_bad_seq == 5
    assert report.problem == "Record 5 was altered after it was written."
    assert report.records == 4


@pytest.mark.parametrize("field", ["ts", "action", "target", "outcome", "source", "details"])
async def test_any_edited_field_is_caught(audit: AuditLog, engine: AsyncEngine, field: str) -> None:
    await fill(audit, 3)
    async with engine.begin() as conn:
        await conn.execute(
            update(audit_records).where(audit_records.c.seq == 2).values({field: "{}"})
        )
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq) == (False, 2)
    assert "altered" in report.problem


async def test_edit_with_matching_hash_is_caught_by_the_next_record(
    audit: AuditLog, engine: AsyncEngine
) -> None:
    """An attacker who fixes the edited record's own hash still breaks the link to it."""
    written = await fill(audit)
    fields = {k: v for k, v in written[4].__dict__.items() if k != "hash"}
    fields["outcome"] = "failure"
    async with engine.begin() as conn:
        await conn.execute(
            update(audit_records)
            .where(audit_records.c.seq == 5)
            .values(outcome="failure", hash=record_hash(**fields))
        )
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq) == (False, 6)
    assert report.problem == "Record 6 does not follow record 5."


async def test_deleted_middle_record_is_caught(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq == 5))
    report = await audit.verify()
    assert not report.intact
    assert report.first_bad_seq == 5
    assert report.problem == "Record 5 is missing: it was deleted."


async def test_deleted_first_record_is_caught(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit, 3)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq == 1))
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq) == (False, 1)
    assert "missing" in report.problem


async def test_truncated_newest_records_are_caught(audit: AuditLog, engine: AsyncEngine) -> None:
    written = await fill(audit)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq > 7))
    await set_head(engine, 7, written[6].hash)
    report = await audit.verify()
    assert not report.intact
    assert report.first_bad_seq == 8
    assert report.head_seq == 7
    assert report.checkpoint_seq == 10
    assert "cut off" in report.problem
    assert "covers record 10" in report.problem
    assert "ends at record 7" in report.problem


async def test_whole_log_deleted_is_caught(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit, 3)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records))
    await set_head(engine, 0, GENESIS_HASH)
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq) == (False, 1)
    assert "cut off" in report.problem


async def test_recomputed_chain_is_caught_by_the_signed_checkpoint(
    audit: AuditLog, engine: AsyncEngine
) -> None:
    """An attacker with database access rewrites record 3 and recomputes every hash after it."""
    original = await fill(audit)
    await rewrite_from(engine, original, 3)
    # The chain alone is consistent again...
    stored = await rows(engine)
    assert stored[2].actor == "someone-else"
    assert stored[-1].hash != original[-1].hash
    # ...but it no longer matches what the platform signed.
    report = await audit.verify()
    assert not report.intact
    assert report.first_bad_seq == 10
    assert report.checkpoint_seq == 10
    assert "rewritten" in report.problem


async def test_forged_checkpoint_is_caught(
    audit: AuditLog, engine: AsyncEngine, signer: CheckpointSigner, tmp_path: Path
) -> None:
    """Truncate, then write an anchor for the shorter chain signed with another key."""
    written = await fill(audit)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq > 7))
    await set_head(engine, 7, written[6].hash)
    forged = Checkpoint(seq=7, hash=written[6].hash, signed_at="2030-01-01T00:00:00", signature="")
    other_key = Ed25519PrivateKey.generate()
    signature = base64.b64encode(other_key.sign(forged.message())).decode()
    anchor = tmp_path / "audit-anchor.json"
    anchor.write_text(json.dumps({**forged.__dict__, "signature": signature}))
    report = await audit.verify()
    assert not report.intact
    assert report.first_bad_seq is None
    assert report.problem == "The signed checkpoint is damaged or its signature does not match."


async def test_checkpoint_moved_with_old_signature_is_caught(
    audit: AuditLog, tmp_path: Path
) -> None:
    await fill(audit)
    anchor = tmp_path / "audit-anchor.json"
    data = json.loads(anchor.read_text())
    data["seq"] = 9
    anchor.write_text(json.dumps(data))
    report = await audit.verify()
    assert not report.intact
    assert "signature does not match" in report.problem


@pytest.mark.parametrize("content", ["", "not json", "{}", '{"seq": 1}', "[]"])
async def test_damaged_anchor_file_is_caught(audit: AuditLog, tmp_path: Path, content: str) -> None:
    await fill(audit, 2)
    (tmp_path / "audit-anchor.json").write_text(content)
    report = await audit.verify()
    assert not report.intact
    assert "damaged" in report.problem


async def test_missing_anchor_with_records_is_reported(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit, 3)
    (tmp_path / "audit-anchor.json").unlink()
    report = await audit.verify()
    assert not report.intact
    assert report.checkpoint_seq is None
    assert report.problem == "There is no signed checkpoint to check the newest records."


async def test_truncation_stays_caught_after_new_records(
    audit: AuditLog, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The platform keeps appending (the next login...) after the cut: it must not re-sign."""
    written = await fill(audit)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq > 7))
    await set_head(engine, 7, written[6].hash)
    await audit.record("after.cut", actor="platform")
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq, report.checkpoint_seq) == (False, 9, 10)
    assert "cut off" in report.problem
    assert "no longer extends the signed checkpoint" in caplog.text
    for i in range(3):  # the new chain grows past the signed sequence number
        await audit.record("after.cut", actor=f"platform{i}")
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq) == (False, 10)
    assert "rewritten" in report.problem


async def test_rewritten_chain_stays_caught_after_new_records(
    audit: AuditLog, engine: AsyncEngine
) -> None:
    original = await fill(audit)
    await rewrite_from(engine, original, 3)
    await audit.record("after.rewrite", actor="platform")
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq, report.checkpoint_seq) == (False, 10, 10)
    assert "rewritten" in report.problem


@pytest.mark.parametrize("damage", ["delete", "garble"])
async def test_lost_anchor_is_not_replaced_by_new_records(
    audit: AuditLog, tmp_path: Path, damage: str
) -> None:
    await fill(audit, 3)
    anchor = tmp_path / "audit-anchor.json"
    if damage == "delete":
        anchor.unlink()
    else:
        anchor.write_text("garbage")
    await audit.record("after.damage", actor="platform")
    report = await audit.verify()
    assert not report.intact
    assert "checkpoint" in report.problem


async def test_checkpoint_is_renewed_after_each_record(
    audit: AuditLog, signer: CheckpointSigner
) -> None:
    for expected in (1, 2, 3):
        rec = await audit.record("x", actor="a")
        checkpoint = signer.latest()
        assert checkpoint is not None
        assert (checkpoint.seq, checkpoint.hash) == (expected, rec.hash)


async def test_concurrent_records_make_a_gap_free_chain(audit: AuditLog) -> None:
    written = await asyncio.gather(
        *(audit.record("concurrent", actor=f"u{i}", details={"i": i}) for i in range(50))
    )
    assert sorted(r.seq for r in written) == list(range(1, 51))
    assert len({r.hash for r in written}) == 50
    report = await audit.verify()
    assert report.intact, report.problem
    assert report.records == 50


@pytest.mark.postgres
async def test_two_processes_appending_keep_one_chain(
    postgres_db_url: str, signer: CheckpointSigner
) -> None:
    """Two platform processes (two engines, two logs) share the chain through the head row lock."""
    engines = [create_engine(postgres_db_url), create_engine(postgres_db_url)]
    try:
        logs = [AuditLog(e, signer, clock=TickingClock()) for e in engines]
        written = await asyncio.gather(
            *(logs[i % 2].record("multi", actor=f"u{i}") for i in range(40))
        )
        report = await logs[0].verify()
    finally:
        for e in engines:
            await e.dispose()
    assert sorted(r.seq for r in written) == list(range(1, 41))
    assert report.intact, report.problem


def test_signer_refuses_a_missing_or_wrong_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Cannot load the audit signing key"):
        CheckpointSigner(tmp_path / "nope.key", tmp_path / "anchor.json")
    from tether.server.services.pki import CertificateAuthority

    ca = CertificateAuthority.create("x")
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    with pytest.raises(ConfigurationError, match="not an Ed25519 key"):
        CheckpointSigner(tmp_path / "ca.key", tmp_path / "anchor.json")


async def test_a_record_on_its_own_is_kept_when_the_checkpoint_cannot_be_written(
    audit: AuditLog, signer: CheckpointSigner, tmp_path: Path
) -> None:
    # It describes something already done (or an attempt): losing it would hide that; the
    # checkpoint catches up with the next append that can write one.
    await audit.record("test.before", actor="t")
    (tmp_path / "audit-anchor.json.tmp").mkdir()
    kept = await audit.record("test.after", actor="t")
    assert (signer.latest() or kept).seq == kept.seq - 1
    (tmp_path / "audit-anchor.json.tmp").rmdir()
    later = await audit.record("test.later", actor="t")
    assert (signer.latest() or kept).seq == later.seq
    assert (await audit.verify()).intact


async def test_a_transaction_is_refused_whole_when_the_checkpoint_cannot_be_written(
    audit: AuditLog, engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "audit-anchor.json.tmp").mkdir()
    with pytest.raises(Unavailable, match=r"could not be written \(Is a directory\)"):
        async with audit.transaction() as tx:
            await tx.record("test.change", actor="t")
    async with engine.connect() as conn:
        assert (await conn.execute(select(audit_records.c.seq))).all() == []
