"""The platform's upgrade-signing key: Ed25519, in the data directory, made at first use.

A key of its own, not the audit key (docs/adr/0051): the audit key's signature says "the log
held this", the upgrade key's says "run this as root on every endpoint that trusts me"; they
are rotated, backed up and guarded for different reasons, and a leak of one must not give the
other. Agents learn the public half when they enroll and trust no other.
"""

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.protocol.upgrade import signed_statement
from tether.server.errors import Unavailable


class UpgradeSigner:
    """Signs upgrade statements with the key in `path`; the file is read at every use, so a key
    replaced on disk (a rotation) takes effect without a restart."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _key(self) -> Ed25519PrivateKey:
        try:
            pem = self._path.read_bytes()
        except FileNotFoundError:
            pem = self._create()
        except OSError as exc:
            raise Unavailable(f"The upgrade-signing key cannot be read: {exc.strerror}.") from exc
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise Unavailable(f"{self._path.name} does not hold an Ed25519 key.")
        return key

    def _create(self) -> bytes:
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another process of the platform made it first: use theirs.
            return self._path.read_bytes()
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return pem

    def public_hex(self) -> str:
        """The public key agents pin: the raw 32 bytes, hex."""
        raw = (
            self._key()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return raw.hex()

    def sign(self, version: str, sha256: str, size: int) -> tuple[str, str]:
        """The signature (hex) over the upgrade statement, and the public key (hex) it checks
        with."""
        key = self._key()
        signature = key.sign(signed_statement(version, sha256, size)).hex()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return signature, public.hex()
