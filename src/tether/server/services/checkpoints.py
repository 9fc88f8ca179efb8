"""Signed checkpoints of the audit chain's head, kept outside the database (DESIGN.md section 7).

A checkpoint is written in two steps around the commit of the records it covers: `prepare`
signs the new head and writes it to a side file before the commit, so a disk that
cannot take the checkpoint refuses the action instead of leaving records no checkpoint covers;
`publish` moves it into place after the commit. A crash between the two leaves the previous
checkpoint, which the chain still extends, so nothing reads as tampered and the next append signs
again. Listeners (witnesses such as a SIEM sink) hear of every published checkpoint.
"""

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tether.protocol.checkpoint import CheckpointDocument, checkpoint_message
from tether.server.errors import ConfigurationError, Unavailable
from tether.server.services.pki import write_private
from tether.server.store.faults import STORAGE_FULL, is_storage_full

log = logging.getLogger(__name__)

try:
    import fcntl

    _flock: Callable[[int, int], None] | None = fcntl.flock
    _LOCK_EX = fcntl.LOCK_EX
    _LOCK_UN = fcntl.LOCK_UN
except ImportError:  # Windows
    _flock = None
    _LOCK_EX = _LOCK_UN = 0


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the chain had `seq` records and ended with `hash`."""

    seq: int
    hash: str
    signed_at: str
    signature: str

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.signed_at)

    def to_json(self) -> dict[str, str | int]:
        return dict(self.__dict__)


def public_key_from_pem(pem: str) -> Ed25519PublicKey:
    """The Ed25519 public key in `pem`; ValueError when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key


def signed_by(key: Ed25519PublicKey, checkpoint: Checkpoint) -> bool:
    """True when `checkpoint` carries a valid signature by `key`."""
    try:
        key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.message())
    except (InvalidSignature, ValueError):
        return False
    return True


def key_fingerprint(public_key_pem: str) -> str:
    """SHA-256 (hex) of the PEM text of an audit public key: how the syslog messages and the web
    name the key, short enough to compare by eye."""
    return hashlib.sha256(public_key_pem.strip().encode()).hexdigest()


def checkpoint_from_json(data: object) -> Checkpoint:
    """A checkpoint read back from its JSON form; ValueError when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    try:
        return Checkpoint(
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            signed_at=str(data["signed_at"]),
            signature=str(data["signature"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def checkpoint_document(checkpoint: Checkpoint, public_key_pem: str, platform: str) -> str:
    """The checkpoint as one line of JSON, with the key that signed it and the platform's name:
    what `tether audit verify --checkpoint` reads back, whichever witness kept it."""
    document = CheckpointDocument(
        seq=checkpoint.seq,
        hash=checkpoint.hash,
        signed_at=checkpoint.signed_at,
        signature=checkpoint.signature,
        public_key=public_key_pem,
    )
    return json.dumps({**document.model_dump(), "platform": platform}, separators=(",", ":"))


CheckpointListener = Callable[[Checkpoint], None]
# How many checkpoints' verdicts a signer remembers (the anchor's few latest are all it meets).
_VERDICTS_KEPT = 8
RETIRED_KEYS_FILE = "audit-keys-retired.json"


@dataclass(frozen=True)
class RetiredKey:
    """An audit key replaced by `tether server rotate-key audit`: it still vouches for
    checkpoints up to `last_seq` (the head when it was retired) and for nothing later, so
    whoever stole it cannot sign a head past the rotation."""

    public_key_pem: str
    last_seq: int
    retired_at: str

    def to_json(self) -> dict[str, str | int]:
        return {
            "public_key": self.public_key_pem,
            "last_seq": self.last_seq,
            "retired_at": self.retired_at,
        }


def load_retired(path: Path) -> list[RetiredKey]:
    """The retired audit keys listed in `path` (none when it does not exist)."""
    try:
        entries = json.loads(path.read_text())
        return [
            RetiredKey(str(e["public_key"]), int(e["last_seq"]), str(e["retired_at"]))
            for e in entries
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"Cannot read the retired audit keys in {path}.") from exc


def public_pem(key: Ed25519PublicKey) -> str:
    return (
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
        .strip()
    )


class CheckpointSigner:
    """Signs chain heads with the Ed25519 key and keeps the newest checkpoint in a file."""

    def __init__(
        self,
        key_path: Path,
        anchor_path: Path,
        writer: str | None = None,
        *,
        key: Ed25519PrivateKey | None = None,
        retired: list[RetiredKey] | None = None,
        staging: str | None = None,
    ) -> None:
        """The signer of the key in `key_path` (or `key`, given outright), knowing the retired
        keys listed beside it (or `retired`).

        Each writer prepares its checkpoint in a file of its own, so none moves another's
        checkpoint into place before that one's records are committed (or after they were rolled
        back): each process of a split platform names itself (`writer`, docs/adr/0044), and a
        process other than the platform that appends beside it (a backup) gives its own
        `staging` suffix."""
        self._anchor_path = anchor_path
        suffix = staging if staging is not None else (f".{writer}.tmp" if writer else ".tmp")
        self._pending_path = anchor_path.with_name(anchor_path.name + suffix)
        # Held while publishing, so a slower process never puts an older checkpoint back over
        # a newer one.
        self._lock_path = anchor_path.with_name(anchor_path.name + ".lock")
        self._lock_fd: int | None = None
        self._listeners: list[CheckpointListener] = []
        self.retired = (
            retired if retired is not None else load_retired(key_path.with_name(RETIRED_KEYS_FILE))
        )
        self._key = key if key is not None else load_signing_key(key_path)
        # Checkpoints already checked, with the verdict: every append reads the anchor back and
        # asks whether it is genuine, and an Ed25519 verification costs more than the rest of a
        # small append. A signer's keys never change (a rotation makes a new signer), so the
        # verdict on one exact checkpoint never changes either.
        self._verdicts: dict[Checkpoint, bool] = {}

    @contextmanager
    def _anchor_lock(self) -> Iterator[None]:
        """Exclude the other processes publishing to this anchor for the few microseconds of a
        read and a rename (no fcntl, on Windows: one process per data directory)."""
        if _flock is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        _flock(self._lock_fd, _LOCK_EX)
        try:
            yield
        finally:
            _flock(self._lock_fd, _LOCK_UN)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def create_key(key_path: Path) -> None:
        key = Ed25519PrivateKey.generate()
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> str:
        return public_pem(self.public_key)

    def sign_statement(self, message: bytes) -> str:
        """A signature (base64) by the current key over `message`: how a restore or a key
        rotation record shows that the key's holder wrote it."""
        return base64.b64encode(self._key.sign(message)).decode()

    def keys_for(self, seq: int) -> list[Ed25519PublicKey]:
        """The keys that may vouch for record `seq`: the current key, and every retired key
        whose time covered it."""
        keys = [self.public_key]
        for old in self.retired:
            if seq <= old.last_seq:
                try:
                    keys.append(public_key_from_pem(old.public_key_pem))
                except ValueError:
                    continue
        return keys

    def statement_genuine(self, message: bytes, signature: str, seq: int) -> bool:
        """True when `signature` over `message` is by a key that vouched for record `seq`."""
        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError:
            return False
        for key in self.keys_for(seq):
            try:
                key.verify(raw, message)
            except InvalidSignature:
                continue
            return True
        return False

    def add_listener(self, listener: CheckpointListener) -> None:
        """Call `listener` with every checkpoint once it is published. It must not block."""
        self._listeners.append(listener)

    def prepare(self, seq: int, head_hash: str, now: datetime) -> Checkpoint:
        """Sign `seq`/`head_hash` and write it beside the anchor; raises
        Unavailable (one sentence) when the disk will not take it."""
        unsigned = Checkpoint(seq=seq, hash=head_hash, signed_at=now.isoformat(), signature="")
        signature = base64.b64encode(self._key.sign(unsigned.message())).decode()
        checkpoint = Checkpoint(seq, head_hash, unsigned.signed_at, signature)
        # Signed here a moment ago: the next append reads it back from the anchor.
        self._remember(checkpoint, True)
        try:
            # Written, not fsynced: a full disk refuses the write itself, and the database's
            # commit is not fsynced either (WAL, synchronous=NORMAL), so both survive a killed
            # process and neither a power cut of its last moments.
            with open(self._pending_path, "w", encoding="utf-8") as out:
                out.write(json.dumps(checkpoint.to_json()) + "\n")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            log.error("Cannot write the audit checkpoint %s: %s", self._pending_path, reason)
            if is_storage_full(exc):
                raise Unavailable(STORAGE_FULL) from exc
            raise Unavailable(
                f"The audit log's checkpoint could not be written ({reason}), so the action was "
                "not carried out; an operator must fix the platform's data directory."
            ) from exc
        return checkpoint

    def publish(self, checkpoint: Checkpoint) -> None:
        """Put a prepared checkpoint in place (the records it covers are committed), unless
        another process already published a newer one, which covers these records too."""
        try:
            with self._anchor_lock():
                current = self.latest()
                if (
                    current is not None
                    and current.seq > checkpoint.seq
                    and self.is_genuine(current)
                ):
                    self._pending_path.unlink(missing_ok=True)
                    return
                self._pending_path.replace(self._anchor_path)
        except OSError:
            # The records are committed and the previous checkpoint still holds for them; the
            # next append signs again.
            log.exception("Cannot move the audit checkpoint into place")
            return
        for listener in self._listeners:
            try:
                listener(checkpoint)
            except Exception:
                log.exception("A checkpoint listener failed")

    def sign(self, seq: int, head_hash: str, now: datetime) -> Checkpoint:
        """Prepare and publish in one step (no records wait on it)."""
        checkpoint = self.prepare(seq, head_hash, now)
        self.publish(checkpoint)
        return checkpoint

    def latest(self) -> Checkpoint | None:
        try:
            return checkpoint_from_json(json.loads(self._anchor_path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return Checkpoint(seq=-1, hash="", signed_at="", signature="")

    def is_genuine(self, checkpoint: Checkpoint) -> bool:
        """Signed by the current key, or by a retired key for a head it was in charge of."""
        known = self._verdicts.get(checkpoint)
        if known is not None:
            return known
        verdict = any(signed_by(key, checkpoint) for key in self.keys_for(checkpoint.seq))
        self._remember(checkpoint, verdict)
        return verdict

    def _remember(self, checkpoint: Checkpoint, verdict: bool) -> None:
        if len(self._verdicts) >= _VERDICTS_KEPT:
            self._verdicts.clear()
        self._verdicts[checkpoint] = verdict

    def knows_key(self, public_key_pem: str) -> bool:
        """True for the current key and every retired one."""
        wanted = public_key_pem.strip()
        return wanted == self.public_key_pem() or any(
            old.public_key_pem.strip() == wanted for old in self.retired
        )


def load_signing_key(key_path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot load the audit signing key {key_path}.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"The audit signing key {key_path} is not an Ed25519 key.")
    return key
