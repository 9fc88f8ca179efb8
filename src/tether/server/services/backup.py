"""`tether server backup`: one file holding a running platform's data, taken without stopping it.

What goes in, in this order (docs/adr/0043-backup-restore-and-key-rotation.md):
1. a `platform.backup` record, so the backup is itself on the chain and in the copy;
2. the anchor (the signed checkpoint), read before the database, so the copy's chain holds
   every record the checkpoint covers;
3. the database: SQLite through its online backup API (a consistent snapshot while the
   platform keeps writing), staged beside the output file and streamed in; PostgreSQL through
   `pg_dump` of an exported snapshot, streamed in (`backup_postgres`);
4. the public files, the file library's blobs (content-addressed, never changed in place), and
   the keys encrypted under a passphrase, or left out;
5. the manifest (a SHA-256 per part, the head the copy ends at) and the trailer.
The output appears under its name only when complete.
"""

import asyncio
import contextlib
import getpass
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import OperationalError

from tether import __version__
from tether.server.config import CONFIG_FILE, Settings
from tether.server.errors import ConfigurationError
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.backup_archive import (
    DATABASE,
    KEY_FILES,
    KEYS,
    OPTIONAL_KEY_FILES,
    PLAIN_FILES,
    ArchiveWriter,
    blob_hash,
    seal_keys,
)
from tether.server.store.db import create_engine, is_sqlite, utcnow

ACTOR = "platform host"
SOURCE = "tether server backup"
Progress = Callable[[int, int], None]
_ATTEMPTS = 5


@dataclass(frozen=True)
class BackupResult:
    path: Path
    sha256: str
    size: int
    head_seq: int
    taken_at: str
    parts: int
    keys: str


def mfa_key_fingerprint(key: bytes) -> str:
    """A name for the MFA sealing key that gives nothing away (a hash of 32 random bytes)."""
    return hashlib.sha256(b"tether mfa sealing key\n" + key).hexdigest()


def public_fingerprints(data: Path) -> dict[str, str]:
    """SHA-256 names of the keys in `data`, by file: what a restore with `--keys-from` checks the
    given key files against (the private keys' public halves; the MFA key's hash)."""
    prints: dict[str, str] = {}
    for name in ("ca.key", "server.key", "audit-signing.key", "ca-next.key"):
        path = data / name
        if path.is_file():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            der = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            prints[name] = hashlib.sha256(der).hexdigest()
    mfa = data / "mfa-sealing.key"
    if mfa.is_file():
        prints["mfa-sealing.key"] = mfa_key_fingerprint(mfa.read_bytes())
    return prints


def take_backup(
    settings: Settings,
    output: Path,
    passphrase: bytes | None,
    progress: Progress | None = None,
) -> BackupResult:
    """Back up the platform in `settings.data_dir` to `output` (keys sealed under `passphrase`,
    or left out when it is None); audited before and, on failure, after."""
    if output.exists():
        raise ConfigurationError(f"{output} already exists; choose a new file name.")
    if not output.parent.is_dir():
        raise ConfigurationError(f"The folder {output.parent} does not exist.")
    with contextlib.suppress(ValueError):
        if output.resolve().is_relative_to(settings.data_dir.resolve()):
            raise ConfigurationError(
                "The backup cannot be written inside the data directory it copies; choose "
                "another folder."
            )
    keys = "encrypted" if passphrase is not None else "left out"
    taken_at = utcnow().isoformat()
    start = asyncio.run(
        _record(settings, "success", {"output": output.name, "keys": keys, "taken_at": taken_at})
    )
    try:
        try:
            result = _write(settings, output, passphrase, progress, taken_at, keys, start)
        except OSError as exc:
            raise ConfigurationError(
                f"The backup to {output} failed ({exc.strerror or exc}); no backup file was left."
            ) from exc
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            asyncio.run(
                _record(settings, "failure", {"output": output.name, "error": reason[:300]})
            )
        raise
    return result


async def _record(settings: Settings, outcome: str, details: dict[str, Any]) -> int:
    engine = create_engine(settings.db_url)
    try:
        signer = CheckpointSigner(
            settings.audit_key, settings.audit_anchor, staging=f".backup-{os.getpid()}.tmp"
        )
        audit = AuditLog(engine, signer)
        for attempt in range(_ATTEMPTS):
            try:
                record = await audit.record(
                    "platform.backup",
                    actor=ACTOR,
                    source=SOURCE,
                    outcome=outcome,
                    details={**details, "os_user": getpass.getuser()},
                )
                return record.seq
            except OperationalError as exc:
                # This process appends beside the running platform: SQLite refuses at once
                # (no busy wait) a transaction that read the head before the platform wrote,
                # so try again on a fresh one.
                if "locked" not in str(exc) or attempt == _ATTEMPTS - 1:
                    raise ConfigurationError(
                        "The backup could not be put on the audit record (the database stayed "
                        "busy); try again."
                    ) from exc
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    finally:
        await engine.dispose()


def _snapshot(source: Path, staged: Path, progress: Callable[[int], None]) -> tuple[int, str, str]:
    """Copy the live database with SQLite's online backup API; returns the copy's head
    (seq, hash) and its schema revision."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(staged)
    try:
        page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
        done = 0

        def step(_status: int, remaining: int, total: int) -> None:
            nonlocal done
            copied = (total - remaining) * page_size
            progress(max(copied - done, 0))
            done = max(copied, done)

        src.execute("PRAGMA busy_timeout=10000")
        # In one step: copying in pieces restarts whenever another process writes between two
        # pieces (a busy platform might never let it finish), while one step is one read
        # transaction, which in WAL mode does not hold the platform's writers back.
        src.backup(dst, pages=-1, progress=step)
        head = dst.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        revision = dst.execute("SELECT version_num FROM alembic_version").fetchone()
        # One file, no WAL beside it: what is restored is this file alone.
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    return int(head[0]), str(head[1]), str(revision[0]) if revision else ""


def _blobs(store: Path) -> list[tuple[str, Path]]:
    root = store / "sha256"
    found: list[tuple[str, Path]] = []
    if root.is_dir():
        for prefix in sorted(p for p in root.iterdir() if p.is_dir()):
            for blob in sorted(prefix.iterdir()):
                if blob.is_file():
                    found.append((f"files/sha256/{prefix.name}/{blob.name}", blob))
    return found


class _Counter:
    """Bytes done against an estimate of the whole, for the progress bar."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress

    def advance(self, count: int) -> None:
        self.done += count
        if self._progress is not None:
            self._progress(min(self.done, self.total), max(self.total, 1))


def _add_sqlite(
    writer: ArchiveWriter, database: Path, staged: Path, counter: _Counter
) -> tuple[int, str, str]:
    # The snapshot and its streaming into the file each count the database once.
    counter.total += 2 * database.stat().st_size
    head = _snapshot(database, staged, counter.advance)
    with open(staged, "rb") as db_file:
        writer.add_stream(DATABASE, db_file)
    staged.unlink()
    return head


def _add_postgres(writer: ArchiveWriter, url: str, counter: _Counter) -> tuple[int, str, str]:
    # Imported here: psycopg takes half a second to import, which a SQLite platform never needs.
    from tether.server.services import backup_postgres

    with backup_postgres.snapshot(url) as snap:
        # The custom format is compressed: the database's size is only an estimate.
        counter.total += snap.size
        with backup_postgres.dump(url, snap.id) as stream:
            writer.add_stream(backup_postgres.DUMP, stream)
    return snap.head_seq, snap.head_hash, snap.revision


def _config_bytes(path: Path, postgres: bool) -> bytes:
    """config.json as the backup carries it: without the database URL of a PostgreSQL platform
    (it may hold a password, and the restore names its own database)."""
    if not postgres:
        return path.read_bytes()
    config = json.loads(path.read_text())
    config.pop("database_url", None)
    return (json.dumps(config, indent=2) + "\n").encode()


def _write(
    settings: Settings,
    output: Path,
    passphrase: bytes | None,
    progress: Progress | None,
    taken_at: str,
    keys: str,
    backup_seq: int,
) -> BackupResult:
    data = settings.data_dir
    postgres = not is_sqlite(settings.db_url)
    anchor = settings.audit_anchor.read_bytes() if settings.audit_anchor.is_file() else b""
    blobs = _blobs(settings.file_store)
    counter = _Counter(sum(p.stat().st_size for _, p in blobs), progress)
    staged = output.with_name(f".{output.name}.db.partial")
    partial = output.with_name(f".{output.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            writer = ArchiveWriter(out, progress=counter.advance)
            if postgres:
                head_seq, head_hash, revision = _add_postgres(writer, settings.db_url, counter)
            else:
                head_seq, head_hash, revision = _add_sqlite(
                    writer, data / "tether.db", staged, counter
                )
            for name in PLAIN_FILES:
                path = data / name
                if name == "audit-anchor.json":
                    if anchor:
                        writer.add_bytes(name, anchor)
                elif name == CONFIG_FILE and path.is_file():
                    writer.add_bytes(name, _config_bytes(path, postgres))
                elif path.is_file():
                    writer.add_bytes(name, path.read_bytes())
            for name, path in blobs:
                try:
                    with open(path, "rb") as blob:
                        info = writer.add_stream(name, blob)
                except FileNotFoundError:
                    # Deleted from the library since the snapshot; the manifest's count of
                    # blobs listed against the parts says so.
                    continue
                if blob_hash(name) != info.sha256:
                    # A restore refuses such a file: better said now than on the worst day.
                    raise ConfigurationError(
                        f"The library file {path} no longer holds what was stored under its "
                        "SHA-256 (damaged on disk); move it out of the library and back up again."
                    )
            if passphrase is not None:
                names = (*KEY_FILES, *OPTIONAL_KEY_FILES)
                files = {n: (data / n).read_bytes() for n in names if (data / n).is_file()}
                writer.add_bytes(KEYS, seal_keys(files, passphrase))
            manifest = {
                "taken_at": taken_at,
                "tether_version": __version__,
                "schema_revision": revision,
                "database": "postgresql" if postgres else "sqlite",
                "hostname": settings.hostname,
                "head_seq": head_seq,
                "head_hash": head_hash,
                "backup_record_seq": backup_seq,
                "anchor": json.loads(anchor) if anchor else None,
                "keys": keys,
                "key_fingerprints": public_fingerprints(data),
                "blobs_listed": len(blobs),
            }
            digest = writer.finish(manifest)
            out.flush()
            os.fsync(out.fileno())
        os.link(partial, output)  # fails rather than replace a file created meanwhile
        partial.unlink()
    finally:
        staged.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return BackupResult(
        path=output,
        sha256=digest,
        size=output.stat().st_size,
        head_seq=head_seq,
        taken_at=taken_at,
        parts=len(writer.parts),
        keys=keys,
    )
