"""`tether server restore`: a backup file back into a new data directory, checked first.

The file is read once, into a hidden directory beside the target, checking as it writes
(framing, every part against the manifest, blobs against their names, the trailer); then the
keys (the passphrase, or the key files given against the manifest's fingerprints). Nothing in
the hidden directory is used before all of that holds. A PostgreSQL platform's dump is then
loaded into the empty database given, in one transaction. The restored audit log must verify;
the restore appends a record signed by the audit key, "restored from the backup taken at T
(head N)", and only then is the directory renamed into place. Any failure removes the hidden
directory (and empties the database again), so the target is never touched.
"""

import asyncio
import getpass
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tether.server.config import CONFIG_FILE
from tether.server.errors import ConfigurationError
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.audit_statements import RESTORE, statement_message
from tether.server.services.backup import public_fingerprints
from tether.server.services.backup_archive import (
    KEY_FILES,
    KEYS,
    OPTIONAL_KEY_FILES,
    POSTGRES_DUMP,
    BackupError,
    Verified,
    open_keys,
    read_parts,
)
from tether.server.services.pki import write_private
from tether.server.store.db import create_engine, sqlite_url, utcnow
from tether.server.store.migrate import refuse_newer

ACTOR = "platform host"
SOURCE = "tether server restore"


@dataclass(frozen=True)
class RestoreResult:
    data: Path
    taken_at: str
    head_seq: int
    record_seq: int


def restore_backup(
    archive: Path,
    target: Path,
    *,
    passphrase: bytes | None,
    keys_from: Path | None,
    database_url: str | None = None,
) -> RestoreResult:
    """Restore `archive` into `target` (absent or empty), with the keys opened by `passphrase`
    or copied from `keys_from`; a PostgreSQL platform's database into the empty database named
    by `database_url`. Raises BackupError or ConfigurationError (one sentence) and leaves
    `target` (and the database) as it was on any failure."""
    label = archive.name
    _check_target(target)
    if not archive.exists():
        raise ConfigurationError(f"There is no file {archive}.")
    if archive.is_dir():
        raise ConfigurationError(f"{archive} is a folder, not a backup file.")
    if database_url is not None:
        # Imported only here: psycopg takes half a second to import, which a SQLite restore
        # never needs.
        from tether.server.services import backup_postgres

        # Before reading gigabytes: a database that cannot be used is said at once.
        backup_postgres.check_empty(database_url)
    work = target.parent / f".{target.name}.restoring-{secrets.token_hex(4)}"
    try:
        work.mkdir(mode=0o700)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot write in {target.parent} ({exc.strerror}); nothing was restored."
        ) from exc
    loaded = False
    try:
        # One read: every part is checked as it is written into the hidden directory, and
        # nothing there is used (or moved into place) before the whole file has been checked.
        with open(archive, "rb") as source:
            verified = read_parts(source, label, sink=lambda name: _create(work, name))
        manifest = verified.manifest
        refuse_newer(str(manifest.get("schema_revision") or "") or None)
        keys = _keys(verified, label, passphrase, keys_from)
        url = _database(manifest, label, work, database_url)
        if database_url is not None:
            from tether.server.services import backup_postgres

            backup_postgres.check_empty(database_url)
            loaded = True
            backup_postgres.load(database_url, work / POSTGRES_DUMP)
            (work / POSTGRES_DUMP).unlink()
        for name, content in keys.items():
            write_private(work / name, content)
        (work / "files" / "partial").mkdir(parents=True, exist_ok=True)
        record_seq = asyncio.run(_append_restore_record(url, work, verified))
        _sync_tree(work)
        _move_into_place(work, target)
    except OSError as exc:
        _undo(work, database_url if loaded else None)
        raise ConfigurationError(
            f"The restore into {target} failed ({exc.strerror or exc}); nothing was restored."
        ) from exc
    except BaseException:
        _undo(work, database_url if loaded else None)
        raise
    return RestoreResult(target, str(manifest["taken_at"]), int(manifest["head_seq"]), record_seq)


def _undo(work: Path, database_url: str | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if database_url is not None:
        from tether.server.services import backup_postgres

        backup_postgres.empty_again(database_url)


def _database(manifest: dict[str, Any], label: str, work: Path, database_url: str | None) -> str:
    """The URL the restored platform's database will have; the restored config.json names it."""
    if manifest.get("database", "sqlite") == "postgresql":
        if database_url is None:
            raise ConfigurationError(
                f"{label} is the backup of a PostgreSQL platform; name a new, empty database "
                "to restore it into with --database-url URL."
            )
        config_path = work / CONFIG_FILE
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config["database_url"] = database_url
        write_private(config_path, (json.dumps(config, indent=2) + "\n").encode())
        return database_url
    if database_url is not None:
        raise ConfigurationError(
            f"{label} is the backup of a SQLite platform, which restores into its directory; "
            "leave out --database-url."
        )
    return sqlite_url(str(work / "tether.db"))


def _check_target(target: Path) -> None:
    if not target.parent.is_dir():
        raise ConfigurationError(f"The folder {target.parent} does not exist.")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigurationError(
            f"{target} already holds files; restore into a new or empty directory."
        )


def _keys(
    verified: Verified, label: str, passphrase: bytes | None, keys_from: Path | None
) -> dict[str, bytes]:
    """The key files to restore, checked against the fingerprints in the manifest."""
    manifest = verified.manifest
    if keys_from is not None:
        missing = [n for n in KEY_FILES if not (keys_from / n).is_file()]
        if missing:
            raise ConfigurationError(f"{keys_from} has no {missing[0]}; nothing was restored.")
        keys = {n: (keys_from / n).read_bytes() for n in KEY_FILES}
        keys |= {
            n: (keys_from / n).read_bytes() for n in OPTIONAL_KEY_FILES if (keys_from / n).is_file()
        }
        where = str(keys_from)
    elif manifest.get("keys") != "encrypted" or verified.keys_blob is None:
        raise ConfigurationError(
            f"{label} holds no keys (it was made with --without-keys); give the folder that "
            "holds them with --keys-from DIR."
        )
    elif passphrase is None:
        raise ConfigurationError(
            f"{label} holds its keys encrypted; give --passphrase-file FILE (or --keys-from DIR)."
        )
    else:
        keys = open_keys(verified.keys_blob, passphrase, label)
        where = label
    expected = manifest.get("key_fingerprints") or {}
    found = _fingerprints(keys)
    for name, fingerprint in expected.items():
        if found.get(name) != fingerprint:
            raise BackupError(
                f"The {name} in {where} is not the key of the platform in {label}; nothing was "
                "restored."
            )
    return keys


def _fingerprints(keys: dict[str, bytes]) -> dict[str, str]:
    # Computed from a private scratch folder, as `tether server backup` computed them.
    with tempfile.TemporaryDirectory() as scratch:
        for name, content in keys.items():
            write_private(Path(scratch) / name, content)
        try:
            return public_fingerprints(Path(scratch))
        except (ValueError, TypeError):
            raise BackupError("A key file given for the restore is not a key.") from None


def _create(work: Path, name: str) -> IO[bytes] | None:
    if name == KEYS:
        return None  # opened in memory above and written as the key files
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "xb")


async def _append_restore_record(url: str, work: Path, verified: Verified) -> int:
    """Append the signed restore record to the restored log (which must verify first)."""
    manifest = verified.manifest
    engine = create_engine(url)
    try:
        audit = AuditLog(
            engine, CheckpointSigner(work / "audit-signing.key", work / "audit-anchor.json")
        )
        report = await audit.verify()
        if not report.intact:
            raise BackupError(
                f"The audit log in the backup does not verify ({report.problem}); nothing was "
                "restored."
            )
        if report.head_seq != manifest.get("head_seq"):
            raise BackupError("The backup's database does not end at the head its manifest names.")
        details: dict[str, Any] = {
            "backup_taken_at": manifest["taken_at"],
            "head_seq": report.head_seq,
            "head_hash": report.head_hash,
            "backup_sha256": verified.sha256,
            "restored_at": utcnow().isoformat(),
            "os_user": getpass.getuser(),
        }
        details["signature"] = audit.signer.sign_statement(statement_message(RESTORE, details))
        async with audit.transaction() as tx:
            record = await tx.record(RESTORE, actor=ACTOR, source=SOURCE, details=details)
        return record.seq
    finally:
        await engine.dispose()


def _sync_tree(work: Path) -> None:
    """Every restored file and folder on disk before the directory gets its name: once at the
    end, so the kernel wrote most of it back while the rest was still being restored."""
    for folder, _dirs, files in os.walk(work):
        for name in [*files, "."]:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _move_into_place(work: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()  # empty, checked above; rename cannot replace a directory otherwise
    os.rename(work, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)
