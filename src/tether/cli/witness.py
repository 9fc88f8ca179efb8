"""The CLI as a witness of the audit log (docs/adr/0032-audit-witnesses.md).

The platform's checkpoint file can be put back to an older genuine copy by anyone who can write
its data directory; a copy of a later checkpoint kept elsewhere shows it. The CLI keeps the last
checkpoint it verified for each platform (its address and pinned CA) in the config folder, and
reads checkpoints kept by others: a file `tether audit checkpoint export` wrote, or a line a
checkpoint sink sent to a SIEM. Signatures are checked here, with the key that came with the
checkpoint, not taken on the platform's word.
"""

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from tether.cli.errors import CliError
from tether.cli.profile import config_dir, write_private
from tether.protocol.checkpoint import MAX_DOCUMENT_BYTES, CheckpointDocument, SignedCheckpoint

MEMORY_FOLDER = "audit-witness"


def genuine(document: CheckpointDocument) -> bool:
    """True when the document's signature was made by the key it carries."""
    try:
        key = serialization.load_pem_public_key(document.public_key.encode())
        if not isinstance(key, Ed25519PublicKey):
            return False
        key.verify(base64.b64decode(document.signature, validate=True), document.message())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def same_key(one: str, other: str) -> bool:
    return one.strip() == other.strip()


def _signed_by(public_key_pem: str, signature: str, message: bytes) -> bool:
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
        if not isinstance(key, Ed25519PublicKey):
            return False
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def walk_rotations(
    known_key: str, rotations: list[dict[str, Any]], platform_key: str
) -> int | None:
    """The record of the last rotation that leads from `known_key` to `platform_key`, each step
    stated by both keys and signed by the key before it (checked here, not taken from the
    platform); None when no such path exists."""
    key = known_key
    last: int | None = None
    for rotation in rotations:
        try:
            message = base64.b64decode(str(rotation["statement"]), validate=True)
            stated = json.loads(message.split(b"\n", 1)[1])
            old, new = str(stated["old_public_key"]), str(stated["new_public_key"])
        except (KeyError, ValueError, IndexError, TypeError):
            return None
        if not same_key(old, key):
            continue
        if not (
            _signed_by(old, str(rotation.get("old_signature", "")), message)
            and _signed_by(new, str(rotation.get("new_signature", "")), message)
        ):
            return None
        key, last = new, int(rotation["seq"])
    return last if same_key(key, platform_key) else None


def day_of(moment: str) -> str:
    """The date of an ISO time ("2026-12-07"), for sentences."""
    try:
        return datetime.fromisoformat(moment).date().isoformat()
    except ValueError:
        return moment


@dataclass(frozen=True)
class Remembered:
    """The checkpoint this config folder last verified for one platform."""

    path: Path
    checkpoint: CheckpointDocument
    verified_at: str


def memory_file(server: str, ca_pem: str) -> Path:
    """Where this config folder keeps its checkpoint for the platform at `server` pinned to
    `ca_pem` (another CA at the same address is another platform)."""
    name = hashlib.sha256(f"{server}\n{ca_pem.strip()}".encode()).hexdigest()[:32]
    return config_dir() / MEMORY_FOLDER / f"{name}.json"


def recall(path: Path) -> Remembered | None:
    """The remembered checkpoint, None on first use."""
    try:
        data = json.loads(path.read_text())
        checkpoint = CheckpointDocument.model_validate(data["checkpoint"])
        return Remembered(path, checkpoint, str(data["verified_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(
            f"{path} is damaged; it held the last audit checkpoint verified here, so restore it "
            "or delete it to start trusting the platform's current checkpoint again."
        ) from exc


def remember(path: Path, server: str, checkpoint: CheckpointDocument, now: datetime) -> None:
    data = {"server": server, "verified_at": now.isoformat(), "checkpoint": checkpoint.model_dump()}
    write_private(path, json.dumps(data, indent=2) + "\n")


def read_witness_file(path: Path) -> SignedCheckpoint:
    """The newest checkpoint in `path`: one exported document, or the JSON lines a checkpoint
    sink appended. A file that holds none, or one whose signature does not match the key it
    carries, is refused in one sentence."""
    malformed = CliError(
        f"{path} is not an audit checkpoint; give the file 'tether audit checkpoint export' "
        "wrote or a line a checkpoint sink sent."
    )
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise CliError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise malformed
    try:
        text = raw.decode()
        try:
            values = [json.loads(text)]
        except ValueError:
            values = [json.loads(line) for line in text.splitlines() if line.strip()]
        found: list[SignedCheckpoint] = []
        for value in values:
            if isinstance(value, dict) and "public_key" in value:
                found.append(CheckpointDocument.model_validate(value))
            else:
                found.append(SignedCheckpoint.model_validate(value))
    except (UnicodeDecodeError, ValueError, ValidationError) as exc:
        raise malformed from exc
    if not found:
        raise malformed
    newest = max(found, key=lambda c: c.seq)
    if isinstance(newest, CheckpointDocument) and not genuine(newest):
        raise CliError(
            f"{path} is not a genuine audit checkpoint: its signature does not match the public "
            "key it carries."
        )
    return newest
