"""`tether audit verify` as a witness: what it remembers, and the checkpoint files it refuses."""

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from tether.server.services.checkpoints import CheckpointSigner, checkpoint_document
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_head, audit_records

from .conftest import Cli


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cli-config"
    monkeypatch.setenv("TETHER_CONFIG_DIR", str(folder))
    return folder


async def test_the_first_verify_remembers_the_checkpoint_and_later_ones_move_it_forward(
    cli: Cli, platform: Platform, config: Path
) -> None:
    first = await cli("audit", "verify")
    assert first.code == 0, first.stderr
    seq = platform.audit.signer.latest().seq  # type: ignore[union-attr]
    memory = next((config / "audit-witness").glob("*.json"))
    assert (
        f"First verification of https://tether.test from this config folder: its checkpoint at record {seq} is now remembered in {memory}"
        in " ".join(first.stdout.split())
    )
    assert memory.stat().st_mode & 0o777 == 0o600
    assert json.loads(memory.read_text())["checkpoint"]["seq"] == seq

    await platform.audit.record("test.event", actor="someone")
    second = await cli("audit", "verify")
    assert second.code == 0, second.stderr
    assert "First verification" not in second.stdout
    day = json.loads(memory.read_text())["verified_at"][:10]
    assert (
        f"The log extends the checkpoint you verified on {day} at record {seq}; record "
        f"{seq + 1} is remembered now." in " ".join(second.stdout.split())
    )
    assert json.loads(memory.read_text())["checkpoint"]["seq"] == seq + 1


async def test_a_checkpoint_file_that_is_not_one_is_refused_in_one_sentence(
    cli: Cli, tmp_path: Path, config: Path
) -> None:
    bad = tmp_path / "cp.json"
    for content in ("not json", '{"seq": 3}', json.dumps({"seq": "3", "hash": "0" * 64})):
        bad.write_text(content)
        done = await cli("audit", "verify", "--checkpoint", str(bad))
        assert done.code == 1
        assert done.stderr.strip().endswith(
            f"{bad} is not an audit checkpoint; give the file 'tether audit checkpoint export' "
            "wrote or a line a checkpoint sink sent."
        )
    missing = await cli("audit", "verify", "--checkpoint", str(tmp_path / "nope.json"))
    assert missing.stderr.strip().endswith(
        f"Cannot read {tmp_path / 'nope.json'}: No such file or directory."
    )


async def test_a_checkpoint_signed_by_another_key_is_refused_in_one_sentence(
    cli: Cli, platform: Platform, tmp_path: Path, config: Path
) -> None:
    CheckpointSigner.create_key(tmp_path / "other.key")
    other = CheckpointSigner(tmp_path / "other.key", tmp_path / "other-anchor.json")
    ours = platform.audit.signer.latest()
    assert ours is not None
    forged = other.sign(ours.seq, ours.hash, platform.audit.now())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(checkpoint_document(forged, other.public_key_pem(), "elsewhere"))
    done = await cli("audit", "verify", "--checkpoint", str(foreign))
    assert done.code == 1
    assert done.stderr.strip().endswith(
        f"{foreign} was signed by another audit key than this platform's, so it cannot witness "
        "this log."
    )
    # The same with the key stripped off (a line from a SIEM's structured data): the platform's
    # key does not verify it either.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(forged.to_json()))
    done = await cli("audit", "verify", "--checkpoint", str(bare))
    assert done.code == 1
    assert done.stderr.strip().endswith(
        f"{bare} was signed by another audit key than this platform's, so it cannot witness "
        "this log."
    )
    # A document whose signature is not its own key's: someone edited the record number.
    edited = tmp_path / "edited.json"
    data = json.loads(checkpoint_document(ours, platform.audit.signer.public_key_pem(), "p"))
    edited.write_text(json.dumps({**data, "seq": ours.seq + 5}))
    done = await cli("audit", "verify", "--checkpoint", str(edited))
    assert done.stderr.strip().endswith(
        f"{edited} is not a genuine audit checkpoint: its signature does not match the public "
        "key it carries."
    )


async def test_exported_checkpoint_verifies_and_a_sink_file_uses_its_newest_line(
    cli: Cli, platform: Platform, tmp_path: Path, config: Path
) -> None:
    exported = await cli("audit", "checkpoint", "export")
    assert exported.code == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["public_key"] == platform.audit.signer.public_key_pem()
    older = tmp_path / "exported.json"
    older.write_text(exported.stdout)
    await platform.audit.record("test.event", actor="someone")
    newer = platform.audit.signer.latest()
    assert newer is not None
    key = platform.audit.signer.public_key_pem()
    lines = tmp_path / "sink.jsonl"
    lines.write_text(
        exported.stdout.replace("\n", "") + "\n" + checkpoint_document(newer, key, "p") + "\n"
    )
    done = await cli("audit", "verify", "--checkpoint", str(lines))
    assert done.code == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert f"The log extends the checkpoint in {lines} at record {newer.seq}." in said
    # --checkpoint leaves this folder's own memory alone.
    assert not (config / "audit-witness").exists()


async def test_a_replaced_audit_key_is_reported_against_the_remembered_checkpoint(
    cli: Cli, platform: Platform, config: Path
) -> None:
    assert (await cli("audit", "verify")).code == 0
    memory = next((config / "audit-witness").glob("*.json"))
    data = json.loads(memory.read_text())
    # Stand in for an attacker who replaced the platform's key: the remembered key differs.
    CheckpointSigner.create_key(config / "other.key")
    other = CheckpointSigner(config / "other.key", config / "other-anchor.json")
    data["checkpoint"]["public_key"] = other.public_key_pem()
    memory.write_text(json.dumps(data))
    done = await cli("audit", "verify")
    assert done.code == 1
    said = re.sub(r"\s+", " ", done.stdout)
    assert (
        "BROKEN: The platform's audit key is not the one that signed the checkpoint you "
        f"verified on {data['verified_at'][:10]}, so its whole log may have been signed anew; "
        f"if an operator replaced the key on purpose, delete {memory}." in said
    )


async def test_a_damaged_memory_file_is_named_and_not_silently_replaced(
    cli: Cli, config: Path
) -> None:
    assert (await cli("audit", "verify")).code == 0
    memory = next((config / "audit-witness").glob("*.json"))
    memory.write_text("{")
    done = await cli("audit", "verify")
    assert done.code == 1
    assert done.stderr.strip().endswith(
        f"{memory} is damaged; it held the last audit checkpoint verified here, so restore it "
        "or delete it to start trusting the platform's current checkpoint again."
    )
    assert memory.read_text() == "{"


async def test_json_output_carries_the_witness_sentence_after_a_rollback(
    cli: Cli, platform: Platform, config: Path
) -> None:
    anchor = platform.settings.audit_anchor
    old_anchor = anchor.with_name("old-anchor.json")
    shutil.copyfile(anchor, old_anchor)
    rolled_to = platform.audit.signer.latest()
    assert rolled_to is not None
    await platform.audit.record("test.event", actor="someone")
    assert (await cli("audit", "verify")).code == 0
    remembered = rolled_to.seq + 1

    shutil.copyfile(old_anchor, anchor)
    kept = await platform.audit.record_at(rolled_to.seq)
    assert kept is not None
    async with platform.engine.begin() as conn:
        await conn.execute(delete(audit_records).where(audit_records.c.seq > rolled_to.seq))
        await conn.execute(update(audit_head).values(seq=kept.seq, hash=kept.hash))
    # The attacker's next action takes the number of the deleted record.
    await platform.audit.record("test.event", actor="attacker")

    done = await cli("audit", "verify", "--json")
    assert done.code == 1
    report = json.loads(done.stdout)
    day = datetime.now(UTC).date().isoformat()
    assert report["intact"] is True
    assert report["witness"]["extends"] is False
    assert report["witness_problem"] == (
        f"The audit log does not extend the checkpoint you verified on {day} at record "
        f"{remembered}: record {remembered} now has a different hash; records were rewritten "
        "or the checkpoint was rolled back."
    )
