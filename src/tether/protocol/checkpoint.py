"""The signed audit checkpoint as it leaves the platform: the API, an exported file, a SIEM sink.

The platform signs `checkpoint_message` with its Ed25519 audit key; anyone holding the public key
can check a checkpoint without asking the platform, which is what makes a copy kept elsewhere a
witness (docs/adr/0032-audit-witnesses.md).
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MESSAGE_TAG = "tether-audit-checkpoint-v1"
# The size of one checkpoint document is bounded: a witness file is read whole.
MAX_DOCUMENT_BYTES = 64 * 1024


def checkpoint_message(seq: int, head_hash: str, signed_at: str) -> bytes:
    """The bytes the audit key signs: the chain had `seq` records and ended with `head_hash`."""
    return f"{MESSAGE_TAG}\n{seq}\n{head_hash}\n{signed_at}".encode()


class SignedCheckpoint(BaseModel):
    """A checkpoint with its signature, as the API, the exported file and the sinks carry it."""

    # Sink lines carry more (the platform's name); a witness needs only these.
    model_config = ConfigDict(extra="ignore")

    seq: Annotated[int, Field(ge=0, strict=True)]
    hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    signed_at: Annotated[str, Field(min_length=1, max_length=64)]
    signature: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{86}==$")]

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.signed_at)


class CheckpointDocument(SignedCheckpoint):
    """What `tether audit checkpoint export` writes and the JSON sink appends: a checkpoint and
    the public key that signed it (PEM), so the file can be checked on its own."""

    public_key: Annotated[str, Field(min_length=1, max_length=1024)]
