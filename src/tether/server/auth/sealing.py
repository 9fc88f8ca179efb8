"""Sealing small secrets (TOTP seeds) before they go into the database: AES-256-GCM.

The key lives in a file in the data directory, so a copy of the database alone (a backup, a
replica, a SQL injection) does not yield anyone's second factor. The context string (the user id)
is bound in as associated data: a sealed secret moved to another user's row does not open.
"""

import base64
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_VERSION = "v1"


class SealError(ValueError):
    """A sealed value is damaged, or was sealed with another key or for another context."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SealError(f"A sealing key is {KEY_BYTES} bytes.")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, plaintext, context.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, context: str) -> bytes:
        version, _, body = sealed.partition(":")
        try:
            if version != _VERSION:
                raise ValueError(version)
            raw = base64.b64decode(body, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context.encode())
        except (ValueError, InvalidTag) as exc:
            raise SealError("The sealed secret cannot be opened with this key.") from exc
