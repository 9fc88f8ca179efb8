"""`tether server rotate-key audit|mfa`: replace a key of the data directory, on the record.

Both run on the platform host with the platform stopped (it holds the keys in memory) and each
is one audit transaction: the new key file is moved into place after the records and the
changed rows are written and before they commit, and put back if the commit fails. A crash
between the move and the commit leaves the new key and the old rows: for the audit key the old
key is already listed as retired, so the old checkpoint still verifies; for the MFA key the
secrets would not open, which is why the old key is kept as `mfa-sealing.key.old` until the
commit is through.

- audit: a new Ed25519 key. The old public key is listed in `audit-keys-retired.json` with the
  last record it vouches for, so older checkpoints (and witnesses holding them) still verify,
  and a thief of the old key cannot sign anything past the rotation. The rotation record is
  signed by both keys over what it states.
- mfa: a new AES-256-GCM sealing key; every TOTP secret (enrolled and pending) is opened with
  the old key and sealed with the new one in the same transaction.
"""

import asyncio
import getpass
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from tether.server.auth.sealing import Sealer, SealError, new_key
from tether.server.config import Settings, split_hostport
from tether.server.errors import ConfigurationError
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.audit_statements import ROTATE_KEY, statement_message
from tether.server.services.backup import mfa_key_fingerprint
from tether.server.services.checkpoints import RETIRED_KEYS_FILE, RetiredKey, key_fingerprint
from tether.server.services.mfa import load_sealer, sealing_context
from tether.server.services.pki import write_private
from tether.server.store.db import create_engine, utcnow
from tether.server.store.tables import users

ACTOR = "platform host"
SOURCE = "tether server rotate-key"


@dataclass(frozen=True)
class Rotation:
    key: str
    record_seq: int
    old_fingerprint: str
    new_fingerprint: str
    count: int = 0


def platform_running(settings: Settings) -> bool:
    """True when something answers on the platform's analyst port."""
    host, port = split_hostport(settings.listen)
    if host in {"0.0.0.0", "::", ""}:
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def refuse_if_running(settings: Settings) -> None:
    """One sentence, and nothing changed, while the platform's analyst port answers."""
    if platform_running(settings):
        raise ConfigurationError(
            f"The platform is running (its analyst port {settings.listen} answers); stop it "
            "first, since it holds the current key in memory; nothing was changed."
        )


def rotate_audit_key(settings: Settings) -> Rotation:
    refuse_if_running(settings)
    return asyncio.run(_rotate_audit(settings))


def rotate_mfa_key(settings: Settings) -> Rotation:
    refuse_if_running(settings)
    return asyncio.run(_rotate_mfa(settings))


async def _rotate_audit(settings: Settings) -> Rotation:
    engine = create_engine(settings.db_url)
    key_path = settings.audit_key
    retired_path = key_path.with_name(RETIRED_KEYS_FILE)
    old_key_bytes = key_path.read_bytes()
    old_retired = retired_path.read_bytes() if retired_path.is_file() else None
    try:
        old = CheckpointSigner(key_path, settings.audit_anchor)
        report = await AuditLog(engine, old).verify()
        if not report.intact:
            raise ConfigurationError(
                f"The audit log does not verify ({report.problem}); a new key would sign over "
                "it, so nothing was changed."
            )
        now = utcnow()
        key = Ed25519PrivateKey.generate()
        retired = [*old.retired, RetiredKey(old.public_key_pem(), report.head_seq, now.isoformat())]
        new = CheckpointSigner(key_path, settings.audit_anchor, key=key, retired=retired)
        details: dict[str, Any] = {
            "key": "audit",
            "old_public_key": old.public_key_pem(),
            "new_public_key": new.public_key_pem(),
            "head_seq": report.head_seq,
            "head_hash": report.head_hash,
            "rotated_at": now.isoformat(),
            "os_user": getpass.getuser(),
        }
        message = statement_message(ROTATE_KEY, details)
        details["old_signature"] = old.sign_statement(message)
        details["new_signature"] = new.sign_statement(message)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            async with AuditLog(engine, new).transaction() as tx:
                if await tx.next_seq() != report.head_seq + 1:
                    raise ConfigurationError(
                        "The audit log grew while the key was being rotated (is the platform "
                        "running?); nothing was changed."
                    )
                record = await tx.record(ROTATE_KEY, actor=ACTOR, source=SOURCE, details=details)
                await tx.flush()
                retired_text = json.dumps([r.to_json() for r in retired], indent=1) + "\n"
                write_private(retired_path, retired_text.encode())
                write_private(key_path, pem)
        except BaseException:
            write_private(key_path, old_key_bytes)
            if old_retired is None:
                retired_path.unlink(missing_ok=True)
            else:
                write_private(retired_path, old_retired)
            raise
        return Rotation(
            "audit",
            record.seq,
            key_fingerprint(old.public_key_pem()),
            key_fingerprint(new.public_key_pem()),
        )
    finally:
        await engine.dispose()


async def _rotate_mfa(settings: Settings) -> Rotation:
    engine = create_engine(settings.db_url)
    key_path = settings.mfa_key
    kept = key_path.with_name(key_path.name + ".old")
    try:
        old = load_sealer(key_path)
        old_bytes = key_path.read_bytes()
        fresh = new_key()
        new = Sealer(fresh)
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        write_private(kept, old_bytes)
        try:
            async with audit.transaction() as tx:
                rows = (
                    await tx.conn.execute(
                        select(
                            users.c.id,
                            users.c.username,
                            users.c.mfa_secret,
                            users.c.mfa_pending_secret,
                        )
                    )
                ).all()
                count = 0
                for row in rows:
                    changes: dict[str, str] = {}
                    for column in ("mfa_secret", "mfa_pending_secret"):
                        sealed = getattr(row, column)
                        if sealed is None:
                            continue
                        try:
                            plain = old.open(sealed, sealing_context(row.id))
                        except SealError:
                            raise ConfigurationError(
                                f"The second factor of {row.username!r} does not open with the "
                                "current MFA key; nothing was changed."
                            ) from None
                        changes[column] = new.seal(plain, sealing_context(row.id))
                        count += 1
                    if changes:
                        await tx.conn.execute(
                            update(users).where(users.c.id == row.id).values(**changes)
                        )
                record = await tx.record(
                    ROTATE_KEY,
                    actor=ACTOR,
                    source=SOURCE,
                    details={
                        "key": "mfa",
                        "secrets": count,
                        "old_fingerprint": mfa_key_fingerprint(old_bytes),
                        "new_fingerprint": mfa_key_fingerprint(fresh),
                        "rotated_at": utcnow().isoformat(),
                        "os_user": getpass.getuser(),
                    },
                )
                await tx.flush()
                write_private(key_path, fresh)
        except BaseException:
            write_private(key_path, old_bytes)
            raise
        kept.unlink(missing_ok=True)
        return Rotation(
            "mfa",
            record.seq,
            mfa_key_fingerprint(old_bytes),
            mfa_key_fingerprint(fresh),
            count,
        )
    finally:
        await engine.dispose()
        if kept.exists() and not key_path.exists():
            os.replace(kept, key_path)
