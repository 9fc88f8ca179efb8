"""A witness's checkpoint catches what the platform's own check cannot: the anchor file rolled
back to an older genuine copy, then later records deleted or rewritten by direct SQL (SQLite
and PostgreSQL), and the next action signing the forged head."""

import shutil
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.audit import AuditLog, Checkpoint, CheckpointSigner
from tether.server.services.audit_witness import check_witness, foreign_key
from tether.server.services.checkpoints import signed_by
from tether.server.store.tables import audit_records

from .test_audit import fill, rewrite_from, rows, set_head


async def _rolled_back(audit: AuditLog, signer: CheckpointSigner, tmp_path: Path) -> Checkpoint:
    """Ten records, with a copy of the genuine anchor taken at record 4; returns the checkpoint
    a witness saw at record 10, then puts the old anchor back as the attacker does."""
    await fill(audit, 4)
    old_anchor = tmp_path / "anchor-at-4.json"
    shutil.copyfile(tmp_path / "audit-anchor.json", old_anchor)
    await fill(audit, 6)
    witnessed = signer.latest()
    assert witnessed is not None
    assert witnessed.seq == 10
    shutil.copyfile(old_anchor, tmp_path / "audit-anchor.json")
    return witnessed


async def test_deleted_records_after_a_rolled_back_anchor_fool_the_platform_not_the_witness(
    audit: AuditLog, engine: AsyncEngine, signer: CheckpointSigner, tmp_path: Path
) -> None:
    witnessed = await _rolled_back(audit, signer, tmp_path)
    kept = await rows(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq > 4))
    await set_head(engine, 4, kept[3].hash)
    # The next action extends the rolled-back checkpoint, so the platform signs the forged head.
    await audit.record("user.login", actor="attacker")
    latest = signer.latest()
    assert latest is not None
    assert latest.seq == 5

    report = await audit.verify()
    # Why the platform alone is fooled: its only reference is the file that was rolled back.
    assert report.intact, report.problem
    assert report.head_seq == 5

    witness = await check_witness(audit, witnessed, report.head_seq)
    assert not witness.extends
    assert witness.genuine
    assert witness.reason == "the log ends at record 5, before it; records were deleted."


async def test_rewritten_records_after_a_rolled_back_anchor_are_caught_by_the_witness(
    audit: AuditLog, engine: AsyncEngine, signer: CheckpointSigner, tmp_path: Path
) -> None:
    witnessed = await _rolled_back(audit, signer, tmp_path)
    await rewrite_from(engine, await rows(engine), 5)
    await audit.record("user.login", actor="attacker")

    report = await audit.verify()
    assert report.intact, report.problem
    assert report.head_seq == 11

    witness = await check_witness(audit, witnessed, report.head_seq)
    assert not witness.extends
    assert witness.reason == (
        "record 10 now has a different hash; records were rewritten or the checkpoint was "
        "rolled back."
    )


async def test_a_log_that_grew_extends_every_earlier_checkpoint(
    audit: AuditLog, signer: CheckpointSigner
) -> None:
    await fill(audit, 3)
    earlier = signer.latest()
    assert earlier is not None
    await fill(audit, 3)
    witness = await check_witness(audit, earlier, 6)
    assert (witness.extends, witness.genuine, witness.reason) == (True, True, "")


async def test_a_checkpoint_of_another_key_or_with_a_changed_field_is_no_evidence(
    audit: AuditLog, signer: CheckpointSigner, tmp_path: Path
) -> None:
    await fill(audit, 3)
    genuine = signer.latest()
    assert genuine is not None
    other_key = tmp_path / "other.key"
    CheckpointSigner.create_key(other_key)
    other = CheckpointSigner(other_key, tmp_path / "other-anchor.json")
    foreign = other.sign(genuine.seq, genuine.hash, audit.now())
    assert not signed_by(signer.public_key, foreign)
    witness = await check_witness(audit, foreign, 3)
    assert (witness.extends, witness.genuine) == (False, False)
    assert witness.reason == "it is not signed by this platform's audit key."

    # A genuine signature moved onto another record number is no checkpoint either.
    moved = Checkpoint(genuine.seq - 1, genuine.hash, genuine.signed_at, genuine.signature)
    assert not (await check_witness(audit, moved, 3)).genuine

    assert foreign_key(other.public_key_pem(), audit)
    assert not foreign_key(signer.public_key_pem(), audit)
    assert foreign_key("not a key", audit)
