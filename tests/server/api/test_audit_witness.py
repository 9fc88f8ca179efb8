"""GET /audit/checkpoint and POST /audit/verify with a checkpoint a witness kept."""

import shutil

import httpx
from sqlalchemy import delete, update

from tether.protocol.checkpoint import CheckpointDocument
from tether.server.services.checkpoints import Checkpoint, public_key_from_pem, signed_by
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_head, audit_records


async def test_the_checkpoint_comes_with_the_key_that_signed_it(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    got = await client.get("/api/v1/audit/checkpoint", headers=admin)
    assert got.status_code == 200
    document = CheckpointDocument.model_validate(got.json())
    assert document.seq == platform.audit.signer.latest().seq  # type: ignore[union-attr]
    key = public_key_from_pem(document.public_key)
    signed = Checkpoint(document.seq, document.hash, document.signed_at, document.signature)
    assert signed_by(key, signed)


async def test_verify_against_a_witness_sees_the_rollback_the_plain_verify_misses(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    anchor = platform.settings.audit_anchor
    old_anchor = anchor.with_name("old-anchor.json")
    shutil.copyfile(anchor, old_anchor)
    rollback_to = platform.audit.signer.latest()
    assert rollback_to is not None
    for n in range(3):
        await platform.audit.record("test.event", actor=f"user{n}")
    witnessed = (await client.get("/api/v1/audit/checkpoint", headers=admin)).json()
    same = await client.post("/api/v1/audit/verify", headers=admin, json={"checkpoint": witnessed})
    assert same.json()["witness"] == {
        "extends": True,
        "genuine": True,
        "checkpoint_seq": witnessed["seq"],
        "head_seq": witnessed["seq"],
        "reason": "",
        "note": "",
    }

    shutil.copyfile(old_anchor, anchor)
    kept = await platform.audit.record_at(rollback_to.seq)
    assert kept is not None
    async with platform.engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq > rollback_to.seq))
        await conn.execute(update(audit_head).values(seq=kept.seq, hash=kept.hash))
    await platform.audit.record("test.event", actor="attacker")

    plain = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    assert plain["intact"] is True
    checked = await client.post(
        "/api/v1/audit/verify", headers=admin, json={"checkpoint": witnessed}
    )
    assert checked.status_code == 200
    body = checked.json()
    assert body["intact"] is True
    assert body["witness"]["reason"] == (
        f"the log ends at record {rollback_to.seq + 1}, before it; records were deleted."
    )
    assert body["signed"]["seq"] == rollback_to.seq + 1


async def test_a_checkpoint_body_that_is_not_one_is_refused_in_one_sentence(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    refused = await client.post(
        "/api/v1/audit/verify", headers=admin, json={"checkpoint": {"seq": "12", "hash": "x"}}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == "Invalid checkpoint.seq: Input should be a valid integer."


async def test_a_damaged_checkpoint_file_is_named_by_verify_not_hidden_behind_an_error(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    platform.settings.audit_anchor.write_text("{not json")
    got = await client.get("/api/v1/audit/checkpoint", headers=admin)
    assert got.status_code == 409
    assert got.json()["detail"] == (
        "The platform has no readable signed checkpoint; run 'tether audit verify' to see why."
    )
    checked = await client.post("/api/v1/audit/verify", headers=admin, json={})
    assert checked.status_code == 200
    body = checked.json()
    assert (body["intact"], body["signed"], body["witness"]) == (False, None, None)
    assert body["problem"] == "The signed checkpoint is damaged or its signature does not match."
