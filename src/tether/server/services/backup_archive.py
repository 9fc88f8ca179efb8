"""The backup file: parts streamed in framed chunks, a manifest with a SHA-256 per part, and a
trailer hash over the rest (docs/adr/0043-backup-restore-and-key-rotation.md).

Layout, read and written front to back so neither side holds more than one chunk:

    TETHER-BACKUP 1\\n
    for each part:  {"part": NAME}\\n  then chunks (4-byte big-endian length, bytes), length 0 ends
    the manifest, as the last part named "manifest.json"
    END <sha256 over every byte before this line but the parts' contents>\\n

Each part's bytes are covered by its SHA-256 in the manifest; the trailer covers everything
else (the magic, the headers, the chunk lengths, the manifest), so a flipped byte anywhere is
caught and every byte is hashed once on each side. Neither is a signature: anyone can write a
file in this format, so a restore also checks every part's name against the few it knows, and a
blob's content against its name.
"""

import base64
import hashlib
import io
import json
import re
import secrets
import struct
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tether.server.errors import Invalid

MAGIC = b"TETHER-BACKUP 1\n"
MANIFEST = "manifest.json"
KEYS = "keys.enc"
DATABASE = "tether.db"
# A PostgreSQL platform's database: `pg_dump --format=custom` of one snapshot.
POSTGRES_DUMP = "tether.pgdump"
CHUNK_BYTES = 1024 * 1024
# What a backup reads from a part's source at once: several chunks, hashed in one call.
READ_BYTES = 8 * CHUNK_BYTES
FORMAT = 1
# Plain files of the data directory a backup carries as they are (keys never: see KEY_FILES).
PLAIN_FILES = (
    "config.json",
    "ca.pem",
    "server.pem",
    "audit-anchor.json",
    "audit-keys-retired.json",
    # During a CA rotation (docs/adr/0048): the next CA.
    "ca-next.pem",
)
KEY_FILES = ("ca.key", "server.key", "audit-signing.key", "mfa-sealing.key")
# Keys only some platforms have: the next CA's, during a CA rotation (docs/adr/0048), and the
# upgrade-signing key, made at the first agent upgrade (docs/adr/0051): without it a restored
# platform would sign with a new key that every enrolled agent refuses.
OPTIONAL_KEY_FILES = ("ca-next.key", "upgrade-signing.key")
_BLOB = re.compile(r"^files/sha256/([0-9a-f]{2})/([0-9a-f]{62})$")
_HEADER_LIMIT = 4096
_LENGTH = struct.Struct(">I")
# scrypt at OWASP's recommendation (2^17, 8, 1): 128 MiB and about half a second per guess.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
_KEYS_AAD = b"tether backup keys v1"
MIN_PASSPHRASE = 12


class BackupError(Invalid):
    """A backup file that cannot be used as it is; the message is one sentence."""


def allowed_part(name: str) -> bool:
    """True for the part names a restore writes: the database, the plain files, the encrypted
    keys and blobs under their hash (nothing that could climb out of the directory)."""
    return name in {DATABASE, POSTGRES_DUMP, KEYS, *PLAIN_FILES} or _BLOB.match(name) is not None


def blob_hash(name: str) -> str | None:
    """The SHA-256 a blob part is named for, or None when `name` is not a blob."""
    match = _BLOB.match(name)
    return match.group(1) + match.group(2) if match else None


@dataclass
class PartInfo:
    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


_pool: ThreadPoolExecutor | None = None


def _hashing_pool() -> ThreadPoolExecutor:
    global _pool  # one hashing thread for the process, made when first needed
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-sha256")
    return _pool


class BackgroundDigest:
    """A SHA-256 fed on a thread of its own, so hashing a chunk overlaps reading the next and
    writing this one (hashlib releases the GIL for large buffers; on this machine hashing
    and the file I/O cost about the same). One thread, first in first out, so the chunks go
    in in order; at most two are waiting, so memory stays bounded."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes) -> None:
        """Queue `data` (which must not change afterwards) for hashing."""
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(_hashing_pool().submit(self._digest.update, data))

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._digest.hexdigest()


class _HashingWriter:
    """Writes to `out` and hashes every byte written (the trailer covers them all)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self.digest.update(data)
        self.written += len(data)

    def write_covered(self, data: bytes | memoryview) -> None:
        """Write bytes a part's own hash covers: the trailer covers that hash (in the
        manifest) instead of hashing them a second time."""
        self._out.write(data)
        self.written += len(data)


class ArchiveWriter:
    """Writes parts in order; `finish` adds the manifest and the trailer."""

    def __init__(self, out: IO[bytes], progress: Callable[[int], None] | None = None) -> None:
        self._out = _HashingWriter(out)
        self._out.write(MAGIC)
        self._progress = progress
        self.parts: list[PartInfo] = []

    def add_stream(self, name: str, source: IO[bytes]) -> PartInfo:
        """Copy `source` to its end as part `name`, in chunks of at most CHUNK_BYTES."""
        if not allowed_part(name) and name != MANIFEST:
            raise ValueError(f"{name!r} is not a part a backup may hold")
        self._out.write(json.dumps({"part": name}).encode() + b"\n")
        digest = BackgroundDigest()
        size = 0
        while block := source.read(READ_BYTES):
            digest.update(block)
            view = memoryview(block)
            for start in range(0, len(block), CHUNK_BYTES):
                chunk = view[start : start + CHUNK_BYTES]
                self._out.write(_LENGTH.pack(len(chunk)))
                if name == MANIFEST:
                    self._out.write(chunk)
                else:
                    self._out.write_covered(chunk)
            size += len(block)
            if self._progress is not None:
                self._progress(len(block))
        self._out.write(_LENGTH.pack(0))
        info = PartInfo(name, size, digest.hexdigest())
        if name != MANIFEST:
            self.parts.append(info)
        return info

    def add_bytes(self, name: str, data: bytes) -> PartInfo:
        return self.add_stream(name, io.BytesIO(data))

    def finish(self, manifest: dict[str, Any]) -> str:
        """Write the manifest (with every part's hash) and the trailer; returns the file's
        SHA-256 (the trailer's)."""
        body = {**manifest, "format": FORMAT, "parts": [p.to_json() for p in self.parts]}
        self.add_bytes(MANIFEST, json.dumps(body, indent=1, sort_keys=True).encode())
        digest = self._out.digest.hexdigest()
        self._out.write(b"END " + digest.encode() + b"\n")
        return digest


@dataclass
class Verified:
    """What a full read of a backup found: its manifest and the file's SHA-256."""

    manifest: dict[str, Any]
    sha256: str
    keys_blob: bytes | None = None
    parts: list[PartInfo] = field(default_factory=list)


def _read_exact(source: IO[bytes], size: int, digest: "hashlib._Hash | None", label: str) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise BackupError(f"{label} ends too early: it was cut short or is not a Tether backup.")
    if digest is not None:
        digest.update(data)
    return data


def read_parts(
    source: IO[bytes],
    label: str,
    sink: Callable[[str], IO[bytes] | None] | None = None,
) -> Verified:
    """Read the whole backup from `source`, checking the framing, every part's hash against the
    manifest, every blob against its name, and the trailer; `sink(name)` may return a file that
    receives each part's bytes as they are read, closed at the part's end (a restore writes
    into its temporary directory this way). Raises BackupError (one sentence) on the first
    problem."""
    digest = hashlib.sha256()
    if source.read(len(MAGIC)) != MAGIC:
        raise BackupError(f"{label} is not a Tether backup (it does not start like one).")
    digest.update(MAGIC)
    seen: list[PartInfo] = []
    names: set[str] = set()
    manifest_bytes = b""
    keys_blob: bytes | None = None
    while True:
        line = source.readline(_HEADER_LIMIT)
        if line.startswith(b"END "):
            break
        if not line.endswith(b"\n"):
            raise BackupError(f"{label} is damaged: a part's header is unreadable.")
        digest.update(line)
        try:
            header = json.loads(line)
            name = str(header["part"])
        except (ValueError, KeyError, TypeError):
            raise BackupError(f"{label} is damaged: a part's header is unreadable.") from None
        if name in names or (name != MANIFEST and not allowed_part(name)):
            raise BackupError(f"{label} holds a part {name!r} that no Tether backup has.")
        if MANIFEST in names:
            raise BackupError(f"{label} is damaged: a part follows its manifest.")
        names.add(name)
        writer = sink(name) if sink is not None and name != MANIFEST else None
        part_digest = BackgroundDigest()
        size = 0
        kept = bytearray()
        while True:
            (length,) = _LENGTH.unpack(_read_exact(source, _LENGTH.size, digest, label))
            if length == 0:
                break
            if length > CHUNK_BYTES:
                raise BackupError(f"{label} is damaged: part {name!r} has a malformed chunk.")
            # A part's bytes are covered by its hash in the manifest, which the trailer
            # covers; only the manifest's own bytes go into the trailer's digest directly.
            chunk = _read_exact(source, length, digest if name == MANIFEST else None, label)
            part_digest.update(chunk)
            size += length
            if name in (MANIFEST, KEYS):
                if size > 64 * CHUNK_BYTES:
                    raise BackupError(f"{label} is damaged: its {name} is far too large.")
                kept += chunk
            if writer is not None:
                writer.write(chunk)
        if writer is not None:
            writer.close()
        part_hash = part_digest.hexdigest()
        expected_blob = blob_hash(name)
        if expected_blob is not None and expected_blob != part_hash:
            raise BackupError(f"{label} is damaged: file {expected_blob} does not match its hash.")
        if name == MANIFEST:
            manifest_bytes = bytes(kept)
        else:
            if name == KEYS:
                keys_blob = bytes(kept)
            seen.append(PartInfo(name, size, part_hash))
    trailer = line.removeprefix(b"END ").strip().decode(errors="replace")
    if trailer != digest.hexdigest() or source.read(1):
        raise BackupError(
            f"{label} is damaged: its content does not match the checksum at its end."
        )
    if MANIFEST not in names:
        raise BackupError(f"{label} is damaged: it has no manifest.")
    try:
        manifest = json.loads(manifest_bytes)
        listed = [
            PartInfo(str(p["name"]), int(p["size"]), str(p["sha256"])) for p in manifest["parts"]
        ]
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"{label} is damaged: its manifest is unreadable.") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"{label} is a backup format this Tether does not read ({manifest.get('format')!r})."
        )
    by_name = {p.name: p for p in seen}
    for part in listed:
        found = by_name.pop(part.name, None)
        if found is None:
            raise BackupError(f"{label} is damaged: part {part.name!r} is missing.")
        if found.sha256 != part.sha256 or found.size != part.size:
            raise BackupError(
                f"{label} is damaged: part {part.name!r} does not match its SHA-256 in the "
                "manifest."
            )
    if by_name:
        raise BackupError(
            f"{label} holds a part {next(iter(by_name))!r} its manifest does not list."
        )
    return Verified(manifest, digest.hexdigest(), keys_blob, seen)


def check_passphrase(passphrase: bytes, where: str) -> bytes:
    """The passphrase without its final line break; one sentence when it is too short."""
    cleaned = passphrase.rstrip(b"\r\n")
    if len(cleaned) < MIN_PASSPHRASE:
        raise BackupError(
            f"The passphrase in {where} is shorter than {MIN_PASSPHRASE} characters; use a "
            "longer one."
        )
    return cleaned


def _kdf(salt: bytes) -> Scrypt:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)


def seal_keys(files: dict[str, bytes], passphrase: bytes) -> bytes:
    """The key files encrypted under `passphrase`: scrypt derives an AES-256-GCM key; the
    parameters travel in a clear first line, the ciphertext after it."""
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    key = _kdf(salt).derive(passphrase)
    plain = json.dumps({n: base64.b64encode(d).decode() for n, d in files.items()}).encode()
    header = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "aead": "AES-256-GCM",
        "nonce": base64.b64encode(nonce).decode(),
    }
    head = json.dumps(header, sort_keys=True).encode()
    return head + b"\n" + AESGCM(key).encrypt(nonce, plain, _KEYS_AAD + head)


def open_keys(blob: bytes, passphrase: bytes, label: str) -> dict[str, bytes]:
    """The key files sealed by `seal_keys`; one sentence when the passphrase does not open
    them."""
    head, _, sealed = blob.partition(b"\n")
    try:
        header = json.loads(head)
        if header.get("kdf") != "scrypt" or header.get("aead") != "AES-256-GCM":
            raise ValueError(header)
        n, r, p = int(header["n"]), int(header["r"]), int(header["p"])
        # Bounds keep a crafted file from asking for gigabytes of scrypt memory.
        if not (2**14 <= n <= 2**20 and 1 <= r <= 16 and 1 <= p <= 4):
            raise ValueError(header)
        salt = base64.b64decode(header["salt"], validate=True)
        nonce = base64.b64decode(header["nonce"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"The keys in {label} are damaged.") from None
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, _KEYS_AAD + head)
    except InvalidTag:
        raise BackupError(
            f"The passphrase does not open the keys in {label}; nothing was restored."
        ) from None
    files = json.loads(plain)
    return {str(n): base64.b64decode(d) for n, d in files.items()}
