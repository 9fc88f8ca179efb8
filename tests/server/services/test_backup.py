"""Backup and restore in process: the file's parts and hashes, the keys only encrypted, and every
refusal (a flipped byte, a wrong passphrase, a foreign or crafted file) leaving the target
untouched; the restore on the record, and a witness that saw records the restore took back."""

import asyncio
import errno
import hashlib
import io
import json
import os
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from tether.server.commands import server_app
from tether.server.config import Settings, load_settings
from tether.server.errors import ConfigurationError
from tether.server.services import backup_archive
from tether.server.services.audit import (
    AuditLog,
    CheckpointSigner,
    VerifyReport,
    canonical_details,
    record_hash,
)
from tether.server.services.audit_witness import check_witness
from tether.server.services.backup import BackupResult, take_backup
from tether.server.services.backup_archive import (
    KEY_FILES,
    ArchiveWriter,
    BackupError,
    read_parts,
)
from tether.server.services.bootstrap import initialise
from tether.server.services.restore import restore_backup
from tether.server.services.upgrade_key import UpgradeSigner
from tether.server.store.db import sqlite_url, utcnow
from tether.server.store.migrate import upgrade

PASSPHRASE = b"correct horse battery staple"
BLOB = b"evidence " * 1000


def _engine(db: Path) -> AsyncEngine:
    # No pool: each asyncio.run here closes its connections before its event loop ends.
    return create_async_engine(sqlite_url(str(db)), poolclass=NullPool)


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The production cost (2^17) is half a second a derivation; the format is the same.
    monkeypatch.setattr(backup_archive, "SCRYPT_N", 2**14)


def _init(root: Path) -> Settings:
    for name in list(os.environ):
        if name.startswith("TETHER_"):
            del os.environ[name]
    settings = Settings(data_dir=root, hostname="backup.test")
    initialise(settings, [])
    digest = hashlib.sha256(BLOB).hexdigest()
    blob = root / "files" / "sha256" / digest[:2] / digest[2:]
    blob.parent.mkdir(parents=True)
    blob.write_bytes(BLOB)
    return load_settings(root)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _init(tmp_path_factory.mktemp("source") / "data")


@pytest.fixture(scope="module")
def backups(source: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, BackupResult]:
    out = tmp_path_factory.mktemp("backups")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backup_archive, "SCRYPT_N", 2**14)
        return {
            "keys": take_backup(source, out / "with-keys.tbk", PASSPHRASE),
            "bare": take_backup(source, out / "without-keys.tbk", None),
        }


def _audit(data: Path) -> tuple[AuditLog, CheckpointSigner]:
    signer = CheckpointSigner(data / "audit-signing.key", data / "audit-anchor.json")
    return AuditLog(_engine(data / "tether.db"), signer), signer


def _verify(data: Path) -> VerifyReport:
    audit, _ = _audit(data)
    return asyncio.run(audit.verify())


def _left_behind(target: Path) -> list[str]:
    """Anything the restore left beside or in its target."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}"))


def test_a_backup_lists_every_part_with_its_hash_and_the_restore_brings_it_all_back(
    source: Settings, backups: dict[str, BackupResult], tmp_path: Path
) -> None:
    made = backups["keys"]
    with open(made.path, "rb") as f:
        verified = read_parts(f, made.path.name)
    manifest = verified.manifest
    names = {p["name"] for p in manifest["parts"]}
    digest = hashlib.sha256(BLOB).hexdigest()
    assert {"tether.db", "ca.pem", "config.json", "audit-anchor.json", "keys.enc"} <= names
    assert f"files/sha256/{digest[:2]}/{digest[2:]}" in names
    assert all(len(p["sha256"]) == 64 for p in manifest["parts"])
    assert manifest["head_seq"] == made.head_seq
    assert manifest["keys"] == "encrypted"
    # The keys are in the file only encrypted.
    content = made.path.read_bytes()
    for name in KEY_FILES:
        assert (source.data_dir / name).read_bytes() not in content
    assert PASSPHRASE not in content

    target = tmp_path / "restored"
    result = restore_backup(made.path, target, passphrase=PASSPHRASE, keys_from=None)
    assert result.record_seq == made.head_seq + 1
    for name in (*KEY_FILES, "ca.pem", "server.pem", "config.json"):
        assert (target / name).read_bytes() == (source.data_dir / name).read_bytes()
    for name in KEY_FILES:
        assert (target / name).stat().st_mode & 0o777 == 0o600
    assert (target / "files" / "sha256" / digest[:2] / digest[2:]).read_bytes() == BLOB
    assert not (target / "keys.enc").exists()
    assert _left_behind(target) == []
    report = _verify(target)
    assert report.intact, report.problem
    assert report.head_seq == made.head_seq + 1
    assert any(
        f"restored from the backup taken at {made.taken_at} (head {made.head_seq})" in n
        for n in report.notes
    )


def test_the_backup_is_on_the_record_with_its_head_checkpoint(
    source: Settings, backups: dict[str, BackupResult]
) -> None:
    made = backups["keys"]
    with sqlite3.connect(source.data_dir / "tether.db") as db:
        rows = db.execute(
            "SELECT seq, outcome, details FROM audit_records WHERE action = 'platform.backup'"
        ).fetchall()
    assert [r[1] for r in rows[:2]] == ["success", "success"]
    details = json.loads(rows[0][2])
    assert details["keys"] == "encrypted"
    assert details["output"] == "with-keys.tbk"
    with open(made.path, "rb") as f:
        manifest = read_parts(f, "x").manifest
    # The copy ends at its own backup record, which the copied checkpoint signs.
    assert manifest["backup_record_seq"] == rows[0][0] == made.head_seq
    assert manifest["anchor"]["seq"] == made.head_seq


@pytest.mark.parametrize("where", ["header", "database", "manifest", "trailer", "middle"])
def test_one_flipped_byte_is_refused_and_the_target_is_untouched(
    backups: dict[str, BackupResult], tmp_path: Path, where: str
) -> None:
    content = bytearray(backups["keys"].path.read_bytes())
    offsets = {
        "header": len(backup_archive.MAGIC) + 3,
        "database": len(backup_archive.MAGIC) + 40,
        "manifest": content.rindex(b'"taken_at"') + 15,
        "trailer": len(content) - 5,
        "middle": len(content) // 2,
    }
    content[offsets[where]] ^= 0x01
    damaged = tmp_path / "damaged.tbk"
    damaged.write_bytes(bytes(content))
    target = tmp_path / "restored"
    target.mkdir()
    with pytest.raises(BackupError, match=r"^damaged\.tbk (is damaged|ends too early|holds)"):
        restore_backup(damaged, target, passphrase=PASSPHRASE, keys_from=None)
    assert list(target.iterdir()) == []
    assert _left_behind(target) == []


def test_a_wrong_passphrase_a_foreign_file_and_a_full_target_are_refused(
    backups: dict[str, BackupResult], tmp_path: Path
) -> None:
    made = backups["keys"].path
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match=r"^The passphrase does not open the keys in"):
        restore_backup(made, target, passphrase=b"not the passphrase", keys_from=None)
    assert not target.exists()
    assert _left_behind(target) == []
    foreign = tmp_path / "photo.jpg"
    foreign.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(5000))
    with pytest.raises(BackupError, match=r"^photo\.jpg is not a Tether backup"):
        restore_backup(foreign, target, passphrase=PASSPHRASE, keys_from=None)
    cut = tmp_path / "cut.tbk"
    cut.write_bytes(made.read_bytes()[:-200])
    with pytest.raises(BackupError, match=r"^cut\.tbk (ends too early|is damaged)"):
        restore_backup(cut, target, passphrase=PASSPHRASE, keys_from=None)
    target.mkdir()
    (target / "precious").write_text("kept")
    with pytest.raises(ConfigurationError, match="already holds files"):
        restore_backup(made, target, passphrase=PASSPHRASE, keys_from=None)
    assert [p.name for p in target.iterdir()] == ["precious"]
    with pytest.raises(ConfigurationError, match="give --passphrase-file FILE"):
        restore_backup(made, tmp_path / "other", passphrase=None, keys_from=None)


def test_a_backup_without_keys_restores_with_the_key_files_and_refuses_someone_elses(
    source: Settings, backups: dict[str, BackupResult], tmp_path: Path
) -> None:
    bare = backups["bare"].path
    assert b"keys.enc" not in bare.read_bytes()
    with pytest.raises(ConfigurationError, match="made with --without-keys"):
        restore_backup(bare, tmp_path / "r1", passphrase=PASSPHRASE, keys_from=None)
    other = _init(tmp_path / "other")
    with pytest.raises(BackupError, match=r"^The [a-z.-]+ in .* is not the key of the platform"):
        restore_backup(bare, tmp_path / "r2", passphrase=None, keys_from=other.data_dir)
    assert _left_behind(tmp_path / "r2") == []
    assert not (tmp_path / "r2").exists()
    result = restore_backup(bare, tmp_path / "r3", passphrase=None, keys_from=source.data_dir)
    assert (tmp_path / "r3" / "audit-signing.key").read_bytes() == source.audit_key.read_bytes()
    assert _verify(tmp_path / "r3").intact
    assert result.head_seq == backups["bare"].head_seq


def _crafted(parts: dict[str, bytes], manifest: dict[str, object]) -> bytes:
    """A well-formed file (right hashes and trailer) with whatever parts an attacker likes."""
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    for name, data in parts.items():
        # Bypass the writer's own name check: an attacker does not use our writer.
        writer._out.write(json.dumps({"part": name}).encode() + b"\n")
        writer._out.write(len(data).to_bytes(4, "big"))
        writer._out.write_covered(data)
        writer._out.write(b"\0\0\0\0")
        digest = hashlib.sha256(data).hexdigest()
        writer.parts.append(backup_archive.PartInfo(name, len(data), digest))
    writer.finish(manifest)
    return out.getvalue()


def test_a_crafted_file_cannot_write_outside_the_directory_or_pass_off_a_blob(
    tmp_path: Path,
) -> None:
    manifest = {"taken_at": "x", "head_seq": 1, "keys": "left out"}
    escape = tmp_path / "escape.tbk"
    escape.write_bytes(_crafted({"../../etc/cron.d/evil": b"* * * * * root sh"}, manifest))
    with pytest.raises(
        BackupError, match=r"holds a part '\.\./\.\./etc/cron\.d/evil' that no Tether"
    ):
        restore_backup(escape, tmp_path / "r", passphrase=None, keys_from=tmp_path)
    fake = tmp_path / "fake-blob.tbk"
    name = "files/sha256/ab/" + "c" * 62
    fake.write_bytes(_crafted({name: b"not what the name says"}, manifest))
    with pytest.raises(BackupError, match="does not match its hash"):
        restore_backup(fake, tmp_path / "r", passphrase=None, keys_from=tmp_path)
    assert not (tmp_path / "r").exists()
    assert _left_behind(tmp_path / "r") == []


def test_backup_refuses_an_existing_output_and_one_inside_the_data_directory(
    source: Settings, backups: dict[str, BackupResult]
) -> None:
    with pytest.raises(ConfigurationError, match="already exists; choose a new file name"):
        take_backup(source, backups["keys"].path, None)
    with pytest.raises(ConfigurationError, match="cannot be written inside the data directory"):
        take_backup(source, source.data_dir / "files" / "b.tbk", None)


def test_the_cli_never_prints_the_passphrase_and_asks_what_to_do_with_the_keys(
    source: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    runner = CliRunner()
    data = ["--data", str(source.data_dir)]
    result = runner.invoke(server_app, ["backup", *data, "--output", str(tmp_path / "b.tbk")])
    assert isinstance(result.exception, ConfigurationError)
    assert "--passphrase-file FILE" in str(result.exception)
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    result = runner.invoke(
        server_app,
        ["backup", *data, "--output", str(tmp_path / "b.tbk"), "--passphrase-file", str(short)],
    )
    assert "shorter than 12 characters" in str(result.exception)
    result = runner.invoke(
        server_app,
        ["backup", *data, "--output", str(tmp_path / "b.tbk"), "--passphrase-file", str(secret)],
    )
    assert result.exit_code == 0, result.output
    assert "Backup written to" in result.output
    restored = runner.invoke(
        server_app,
        ["restore", str(tmp_path / "b.tbk"), "--data", str(tmp_path / "r"),
         "--passphrase-file", str(secret)],
    )  # fmt: skip
    assert restored.exit_code == 0, restored.output
    assert "Hosts enrolled after the backup must enroll again." in restored.output
    for output in (result.output, restored.output):
        assert PASSPHRASE.decode() not in output


def test_a_witness_that_saw_records_the_restore_took_back_is_told_why(
    source: Settings, backups: dict[str, BackupResult], tmp_path: Path
) -> None:
    """After the backup the source signed more checkpoints; a witness kept the newest. Against
    the restored log it extends, with the restore's sentence, instead of "records deleted"."""
    audit, signer = _audit(source.data_dir)
    for n in range(3):
        asyncio.run(audit.record("test.after_backup", actor="tester", details={"n": n}))
    seen = signer.latest()
    assert seen is not None
    assert seen.seq > backups["keys"].head_seq
    target = tmp_path / "restored"
    restore_backup(backups["keys"].path, target, passphrase=PASSPHRASE, keys_from=None)
    restored, _ = _audit(target)
    head = asyncio.run(restored.verify()).head_seq
    report = asyncio.run(check_witness(restored, seen, head))
    assert report.extends
    assert report.genuine
    assert report.reason == ""
    assert f"head {backups['keys'].head_seq}" in report.note
    assert "gone because of that restore, not an attack" in report.note
    # A checkpoint signed after the restore is not explained by it: that is an attack.
    later = signer.sign(seen.seq + 5, "f" * 64, utcnow() + timedelta(days=1))
    report = asyncio.run(check_witness(restored, later, head))
    assert not report.extends
    assert "records were deleted" in report.reason


def test_a_restore_record_written_without_the_key_breaks_the_chain(
    backups: dict[str, BackupResult], tmp_path: Path
) -> None:
    """Someone with the database but not the key cannot explain a rollback away as a restore."""
    target = tmp_path / "restored"
    restore_backup(backups["keys"].path, target, passphrase=PASSPHRASE, keys_from=None)
    audit, _ = _audit(target)
    record = asyncio.run(audit.record_at(backups["keys"].head_seq + 1))
    assert record is not None
    assert record.action == "platform.restore"
    details = record.details_object()
    details["backup_taken_at"] = "2020-01-01T00:00:00+00:00"
    fields = {**record.__dict__, "details": canonical_details(details)}
    del fields["hash"]
    with sqlite3.connect(target / "tether.db") as db:
        db.execute(
            "UPDATE audit_records SET details = ?, hash = ? WHERE seq = ?",
            (fields["details"], record_hash(**fields), record.seq),
        )
        db.execute("UPDATE audit_head SET hash = ? WHERE id = 1", (record_hash(**fields),))
    report = _verify(target)
    assert not report.intact
    assert report.problem == (
        f"Record {record.seq} claims a restore but is not signed by the platform's audit key."
    )


def test_a_database_or_backup_from_a_newer_tether_is_refused_in_one_sentence(
    backups: dict[str, BackupResult], tmp_path: Path
) -> None:
    newer = "The database was made by a newer Tether (schema 9999); run that version or a newer"
    parts: dict[str, io.BytesIO] = {}

    def keep(name: str) -> io.BytesIO:
        parts[name] = _Kept()
        return parts[name]

    with open(backups["bare"].path, "rb") as f:
        manifest = read_parts(f, "x", sink=keep).manifest
    manifest["schema_revision"] = "9999"
    from_the_future = tmp_path / "future.tbk"
    from_the_future.write_bytes(_crafted({n: p.getvalue() for n, p in parts.items()}, manifest))
    target = tmp_path / "r"
    with pytest.raises(ConfigurationError, match=re.escape(newer)):
        restore_backup(from_the_future, target, passphrase=None, keys_from=tmp_path)
    assert not target.exists()
    db = tmp_path / "newer.db"
    db.write_bytes(parts["tether.db"].getvalue())
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(ConfigurationError, match=re.escape(newer)):
        upgrade(sqlite_url(str(db)))


class _Kept(io.BytesIO):
    """A part kept in memory: read_parts closes it at the part's end, which would drop it."""

    def close(self) -> None:
        pass


def test_a_full_disk_during_a_backup_is_one_sentence_on_the_record_and_leaves_nothing(
    source: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def full(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".partial"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr("tether.server.services.backup.os.open", full)
    with pytest.raises(ConfigurationError) as refused:
        take_backup(source, tmp_path / "b.tbk", None)
    assert str(refused.value) == (
        f"The backup to {tmp_path / 'b.tbk'} failed (No space left on device); no backup file "
        "was left."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with sqlite3.connect(source.data_dir / "tether.db") as db:
        outcome, details = db.execute(
            "SELECT outcome, details FROM audit_records WHERE action = 'platform.backup' "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert outcome == "failure"
    assert "No space left on device" in json.loads(details)["error"]


def test_a_library_file_rotten_on_disk_stops_the_backup_instead_of_spoiling_it(
    tmp_path: Path,
) -> None:
    """A blob that no longer matches its name would make the whole backup unrestorable; the
    backup says so at once, names the file, and leaves nothing."""
    settings = _init(tmp_path / "data")
    digest = hashlib.sha256(BLOB).hexdigest()
    blob = settings.data_dir / "files" / "sha256" / digest[:2] / digest[2:]
    rotten = bytearray(blob.read_bytes())
    rotten[100] ^= 0x01
    blob.write_bytes(bytes(rotten))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigurationError, match=r"^The library file .* no longer holds what"):
        take_backup(settings, out / "b.tbk", None)
    assert list(out.iterdir()) == []
    blob.write_bytes(BLOB)
    made = take_backup(settings, out / "b.tbk", None)
    assert made.path.is_file()


def test_a_part_of_many_chunks_reads_back_whole(tmp_path: Path) -> None:
    """Reads of several chunks are framed in chunks of at most CHUNK_BYTES and hash the same
    as one pass over the bytes (the hashing thread keeps their order)."""
    content = os.urandom(backup_archive.READ_BYTES + 3 * backup_archive.CHUNK_BYTES + 17)
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    info = writer.add_stream("tether.db", io.BytesIO(content))
    writer.finish({})
    assert info.sha256 == hashlib.sha256(content).hexdigest()
    kept = _Kept()
    verified = read_parts(io.BytesIO(out.getvalue()), "x", sink=lambda _name: kept)
    assert kept.getvalue() == content
    assert verified.parts[0].sha256 == info.sha256


def test_the_upgrade_signing_key_goes_with_the_backup_so_agents_keep_accepting_upgrades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents pin the upgrade key at enrollment: a restore that made a new one would leave every
    agent refusing upgrades. The key travels like the others: encrypted, or from --keys-from."""
    monkeypatch.setattr(backup_archive, "SCRYPT_N", 2**14)
    settings = _init(tmp_path / "data")
    pinned = UpgradeSigner(settings.upgrade_key).public_hex()  # made at first use
    key = settings.upgrade_key.read_bytes()
    sealed = take_backup(settings, tmp_path / "sealed.tbk", PASSPHRASE)
    assert key not in sealed.path.read_bytes()
    restored = restore_backup(
        sealed.path, tmp_path / "restored", passphrase=PASSPHRASE, keys_from=None
    ).data
    assert UpgradeSigner(restored / settings.upgrade_key.name).public_hex() == pinned
    assert (restored / settings.upgrade_key.name).stat().st_mode & 0o777 == 0o600
    bare = take_backup(settings, tmp_path / "bare.tbk", None)
    again = restore_backup(
        bare.path, tmp_path / "again", passphrase=None, keys_from=settings.data_dir
    )
    assert UpgradeSigner(again.data / settings.upgrade_key.name).public_hex() == pinned
