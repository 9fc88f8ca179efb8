"""Backup and restore of a PostgreSQL platform, on the real PostgreSQL test server: pg_dump of one
exported snapshot inside the backup file, restore into a new empty database only, and every
refusal leaving the directory and the database as they were."""

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.conftest import DEFAULT_POSTGRES, POSTGRES_ENV, _conninfo
from tether.server.config import Settings, load_settings
from tether.server.errors import ConfigurationError
from tether.server.services import backup_archive, backup_postgres, restore
from tether.server.services.audit import AuditLog, CheckpointSigner, VerifyReport
from tether.server.services.backup import BackupResult, take_backup
from tether.server.services.backup_archive import POSTGRES_DUMP, BackupError, read_parts
from tether.server.services.bootstrap import initialise
from tether.server.services.restore import restore_backup
from tether.server.store.db import create_engine

pytestmark = pytest.mark.postgres

PASSPHRASE = b"correct horse battery staple"
BLOB = b"pg evidence " * 1000


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup_archive, "SCRYPT_N", 2**14)


@pytest.fixture(scope="module")
def new_database() -> Iterator[Callable[[], str]]:
    """Makes empty databases of this module's own on the test server; drops them all at the
    end."""
    server = make_url(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES)
    try:
        admin = psycopg.connect(_conninfo(str(server)), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable ({exc}).", pytrace=False)
        pytest.skip(f"PostgreSQL is unreachable ({exc})")
    made: list[str] = []

    def make() -> str:
        name = f"tether_backup_{secrets.token_hex(6)}"
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return server.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )

    try:
        yield make
    finally:
        for name in made:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


@pytest.fixture(scope="module")
def source(new_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    for name in list(os.environ):
        if name.startswith("TETHER_"):
            del os.environ[name]
    root = tmp_path_factory.mktemp("pg-source") / "data"
    initialise(Settings(data_dir=root, hostname="pg.test", database_url=new_database()), [])
    digest = hashlib.sha256(BLOB).hexdigest()
    blob = root / "files" / "sha256" / digest[:2] / digest[2:]
    blob.parent.mkdir(parents=True)
    blob.write_bytes(BLOB)
    return load_settings(root)


@pytest.fixture(scope="module")
def made(source: Settings, tmp_path_factory: pytest.TempPathFactory) -> BackupResult:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backup_archive, "SCRYPT_N", 2**14)
        return take_backup(source, tmp_path_factory.mktemp("pg-out") / "pg.tbk", PASSPHRASE)


def _verify(url: str, data: Path) -> VerifyReport:
    async def run() -> VerifyReport:
        engine = create_engine(url)
        try:
            signer = CheckpointSigner(data / "audit-signing.key", data / "audit-anchor.json")
            return await AuditLog(engine, signer).verify()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(url: str) -> int:
    with psycopg.connect(_conninfo(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema')"
        ).fetchone()
    return int(row[0]) if row else -1


def _head(url: str) -> int:
    with psycopg.connect(_conninfo(url)) as conn:
        row = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
    return int(row[0]) if row else -1


def test_a_postgresql_backup_carries_the_dump_and_restores_into_a_new_database(
    source: Settings, made: BackupResult, new_database: Callable[[], str], tmp_path: Path
) -> None:
    with open(made.path, "rb") as f:
        manifest = read_parts(f, made.path.name).manifest
    names = {p["name"] for p in manifest["parts"]}
    assert POSTGRES_DUMP in names
    assert "tether.db" not in names
    assert manifest["database"] == "postgresql"
    dump = next(p for p in manifest["parts"] if p["name"] == POSTGRES_DUMP)
    assert len(dump["sha256"]) == 64
    assert dump["size"] > 0
    # The database URL (which may hold a password) does not travel in the backup.
    assert b"database_url" not in made.path.read_bytes()
    target_url = new_database()
    target = tmp_path / "restored"
    result = restore_backup(
        made.path, target, passphrase=PASSPHRASE, keys_from=None, database_url=target_url
    )
    assert result.head_seq == made.head_seq
    assert result.record_seq == made.head_seq + 1
    assert _head(target_url) == made.head_seq + 1
    config = json.loads((target / "config.json").read_text())
    assert config["database_url"] == target_url
    assert load_settings(target).db_url == target_url
    assert not (target / POSTGRES_DUMP).exists()
    assert not (target / "tether.db").exists()
    digest = hashlib.sha256(BLOB).hexdigest()
    assert (target / "files" / "sha256" / digest[:2] / digest[2:]).read_bytes() == BLOB
    report = _verify(target_url, target)
    assert report.intact, report.problem
    assert any("restored from the backup taken at" in note for note in report.notes)
    # The source is untouched by all of this.
    assert _verify(source.db_url, source.data_dir).intact


def test_a_restore_into_a_database_that_holds_anything_is_refused_and_changes_nothing(
    source: Settings, made: BackupResult, tmp_path: Path
) -> None:
    before = _head(source.db_url)
    target = tmp_path / "restored"
    with pytest.raises(ConfigurationError, match=r"^The database .* is not empty; restore into"):
        restore_backup(
            made.path, target, passphrase=PASSPHRASE, keys_from=None, database_url=source.db_url
        )
    assert _head(source.db_url) == before
    assert not target.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".restored")] == []


def test_the_wrong_kind_of_target_is_refused_in_one_sentence(
    made: BackupResult, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"PostgreSQL platform; name a new, empty"):
        restore_backup(made.path, tmp_path / "r1", passphrase=PASSPHRASE, keys_from=None)
    assert not (tmp_path / "r1").exists()
    with pytest.raises(ConfigurationError, match=r"^--database-url must name a PostgreSQL"):
        restore_backup(
            made.path,
            tmp_path / "r2",
            passphrase=PASSPHRASE,
            keys_from=None,
            database_url="sqlite+aiosqlite:////tmp/x.db",
        )
    with pytest.raises(ConfigurationError, match=r"^Cannot connect to postgresql"):
        restore_backup(
            made.path,
            tmp_path / "r3",
            passphrase=PASSPHRASE,
            keys_from=None,
            database_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
        )


def test_a_flipped_byte_in_the_dump_leaves_the_database_empty(
    made: BackupResult, new_database: Callable[[], str], tmp_path: Path
) -> None:
    content = bytearray(made.path.read_bytes())
    content[content.index(b"PGDMP") + 200] ^= 0x01  # inside pg_dump's own bytes
    damaged = tmp_path / "damaged.tbk"
    damaged.write_bytes(bytes(content))
    target_url = new_database()
    with pytest.raises(BackupError, match=r"^damaged\.tbk is damaged: part 'tether\.pgdump'"):
        restore_backup(
            damaged, tmp_path / "r", passphrase=PASSPHRASE, keys_from=None, database_url=target_url
        )
    assert _tables(target_url) == 0
    assert not (tmp_path / "r").exists()


def test_a_failure_after_the_load_empties_the_database_again(
    made: BackupResult,
    new_database: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(*_args: object) -> int:
        raise BackupError("The audit log in the backup does not verify (test); nothing restored.")

    monkeypatch.setattr(restore, "_append_restore_record", refuse)
    target_url = new_database()
    with pytest.raises(BackupError, match="does not verify"):
        restore_backup(
            made.path,
            tmp_path / "r",
            passphrase=PASSPHRASE,
            keys_from=None,
            database_url=target_url,
        )
    assert _tables(target_url) == 0
    backup_postgres.check_empty(target_url)  # the same database can be used again
    assert not (tmp_path / "r").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".r.")] == []


def test_the_dump_is_the_snapshot_the_manifest_names_whatever_is_written_meanwhile(
    source: Settings, new_database: Callable[[], str], tmp_path: Path
) -> None:
    async def append() -> None:
        engine = create_engine(source.db_url)
        try:
            signer = CheckpointSigner(source.audit_key, source.audit_anchor)
            await AuditLog(engine, signer).record("test.meanwhile", actor="test")
        finally:
            await engine.dispose()

    dump_file = tmp_path / "snapshot.pgdump"
    with backup_postgres.snapshot(source.db_url) as snap:
        asyncio.run(append())  # committed by another connection after the snapshot
        with backup_postgres.dump(source.db_url, snap.id) as stream, open(dump_file, "wb") as f:
            while chunk := stream.read(1 << 20):
                f.write(chunk)
    assert _head(source.db_url) == snap.head_seq + 1
    copy = new_database()
    backup_postgres.load(copy, dump_file)
    assert _head(copy) == snap.head_seq


def test_without_pg_dump_the_backup_names_the_package_and_is_on_the_record(
    source: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    before = _head(source.db_url)
    with pytest.raises(ConfigurationError, match=r"^pg_dump is not installed on this machine; "):
        take_backup(source, tmp_path / "never.tbk", None)
    assert not (tmp_path / "never.tbk").exists()
    assert list(tmp_path.iterdir()) == []
    # The attempt and its failure are both on the record.
    assert _head(source.db_url) == before + 2
    assert _verify(source.db_url, source.data_dir).intact
