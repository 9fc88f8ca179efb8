"""`tether server rotate-key audit|mfa` on a stopped platform's data directory."""

import asyncio
import base64
import json
import os
import socket
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.ports import free_port
from tether.cli.witness import walk_rotations
from tether.server.auth.sealing import Sealer
from tether.server.config import Settings, load_settings
from tether.server.errors import ConfigurationError
from tether.server.services.audit import AuditLog, CheckpointSigner, VerifyReport
from tether.server.services.audit_statements import statement_message, statement_problem
from tether.server.services.audit_witness import check_witness
from tether.server.services.bootstrap import initialise
from tether.server.services.checkpoints import Checkpoint
from tether.server.services.key_rotation import rotate_audit_key, rotate_mfa_key
from tether.server.services.mfa import sealing_context
from tether.server.store.db import sqlite_url, utcnow


def _engine(db: Path) -> AsyncEngine:
    # No pool: each asyncio.run here closes its connections before its event loop ends.
    return create_async_engine(sqlite_url(str(db)), poolclass=NullPool)


@pytest.fixture
def data(tmp_path: Path) -> Settings:
    for name in list(os.environ):
        if name.startswith("TETHER_"):
            del os.environ[name]
    port = free_port()
    initialise(
        Settings(data_dir=tmp_path / "data", hostname="rotate.test", listen=f"127.0.0.1:{port}"),
        [],
    )
    return load_settings(tmp_path / "data")


def _log(settings: Settings) -> AuditLog:
    signer = CheckpointSigner(settings.audit_key, settings.audit_anchor)
    return AuditLog(_engine(settings.data_dir / "tether.db"), signer)


def _verify(settings: Settings) -> VerifyReport:
    return asyncio.run(_log(settings).verify())


def test_a_new_audit_key_signs_on_and_the_old_one_still_vouches_for_what_it_signed(
    data: Settings,
) -> None:
    old_pem = data.audit_key.read_bytes()
    old_signer = CheckpointSigner(data.audit_key, data.audit_anchor)
    witnessed = old_signer.latest()
    assert witnessed is not None
    done = rotate_audit_key(data)
    assert data.audit_key.read_bytes() != old_pem
    assert data.audit_key.stat().st_mode & 0o777 == 0o600
    report = _verify(data)
    assert report.intact, report.problem
    assert report.head_seq == done.record_seq
    assert any("the audit key was rotated" in n for n in report.notes)
    retired = json.loads((data.data_dir / "audit-keys-retired.json").read_text())
    assert retired[0]["last_seq"] == done.record_seq - 1
    log = _log(data)
    # A witness's checkpoint from before the rotation still checks out.
    kept = asyncio.run(check_witness(log, witnessed, report.head_seq))
    assert kept.genuine
    assert kept.extends
    # New appends are signed by the new key and verify.
    asyncio.run(log.record("test.after", actor="tester"))
    assert _verify(data).intact
    # Whoever stole the old key cannot sign a head past the rotation.
    thief = CheckpointSigner(data.audit_key, data.audit_anchor, key=_private(old_pem))
    forged = thief.prepare(done.record_seq + 1, "0" * 64, utcnow())
    assert not log.signer.is_genuine(forged)
    assert log.signer.is_genuine(_resigned(thief, witnessed))


def _private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _resigned(signer: CheckpointSigner, checkpoint: Checkpoint) -> Checkpoint:
    return signer.prepare(checkpoint.seq, checkpoint.hash, utcnow() - timedelta(days=1))


def test_a_rotation_record_not_signed_by_both_keys_breaks_the_chain(data: Settings) -> None:
    done = rotate_audit_key(data)
    with sqlite3.connect(data.data_dir / "tether.db") as db:
        details = json.loads(
            db.execute(
                "SELECT details FROM audit_records WHERE seq = ?", (done.record_seq,)
            ).fetchone()[0]
        )
    assert details["old_signature"] != details["new_signature"]
    signer = CheckpointSigner(data.audit_key, data.audit_anchor)
    forged = {**details, "old_signature": details["new_signature"]}
    prev = details["head_hash"]
    assert statement_problem(signer, done.record_seq, prev, "platform.rotate_key", forged) == (
        f"Record {done.record_seq} claims an audit key rotation that is not signed by both the "
        "old and the new key."
    )
    assert statement_problem(signer, done.record_seq, prev, "platform.rotate_key", details) is None


def test_the_mfa_key_rotation_seals_every_secret_anew(data: Settings) -> None:
    old = Sealer(data.mfa_key.read_bytes())
    with sqlite3.connect(data.data_dir / "tether.db") as db:
        user_id, sealed = db.execute("SELECT id, mfa_secret FROM users").fetchone()
    secret = old.open(sealed, sealing_context(user_id))
    done = rotate_mfa_key(data)
    assert done.count == 1
    new = Sealer(data.mfa_key.read_bytes())
    with sqlite3.connect(data.data_dir / "tether.db") as db:
        (resealed,) = db.execute("SELECT mfa_secret FROM users WHERE id = ?", (user_id,)).fetchone()
    assert resealed != sealed
    assert new.open(resealed, sealing_context(user_id)) == secret
    assert not (data.data_dir / "mfa-sealing.key.old").exists()
    report = _verify(data)
    assert report.intact
    assert any("MFA sealing key was rotated" in n for n in report.notes)


def test_a_secret_the_key_cannot_open_stops_the_rotation_and_changes_nothing(
    data: Settings,
) -> None:
    with sqlite3.connect(data.data_dir / "tether.db") as db:
        db.execute("UPDATE users SET mfa_secret = 'v1:AAAA'")
    key_before = data.mfa_key.read_bytes()
    head_before = _verify(data).head_seq
    with pytest.raises(ConfigurationError, match="does not open with the current MFA key"):
        rotate_mfa_key(data)
    assert data.mfa_key.read_bytes() == key_before
    assert _verify(data).head_seq == head_before


def test_a_running_platform_is_refused(data: Settings) -> None:
    host, port = data.listen.rsplit(":", 1)
    with socket.socket() as listening:
        listening.bind((host, int(port)))
        listening.listen()
        for rotate in (rotate_audit_key, rotate_mfa_key):
            with pytest.raises(ConfigurationError, match="The platform is running"):
                rotate(data)


def test_a_witness_walks_from_the_old_key_to_the_new_one_only_through_signed_rotations(
    data: Settings,
) -> None:
    old_pem = CheckpointSigner(data.audit_key, data.audit_anchor).public_key_pem()
    first = rotate_audit_key(data)
    second = rotate_audit_key(data)
    log = _log(data)
    records = asyncio.run(log.key_rotations())
    rotations = [
        {
            "seq": r.seq,
            "statement": base64.b64encode(statement_message(r.action, r.details_object())).decode(),
            "old_signature": r.details_object()["old_signature"],
            "new_signature": r.details_object()["new_signature"],
        }
        for r in records
    ]
    current = log.signer.public_key_pem()
    assert walk_rotations(old_pem, rotations, current) == second.record_seq
    assert [r["seq"] for r in rotations] == [first.record_seq, second.record_seq]
    # A rotation the old key did not sign leads nowhere.
    forged = [{**rotations[0], "old_signature": rotations[0]["new_signature"]}, rotations[1]]
    assert walk_rotations(old_pem, forged, current) is None
    # Nor does a key that no rotation names.
    stranger = CheckpointSigner(
        data.audit_key, data.audit_anchor, key=Ed25519PrivateKey.generate()
    ).public_key_pem()
    assert walk_rotations(stranger, rotations, current) is None
    assert _verify(data).intact
