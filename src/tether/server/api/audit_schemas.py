"""Bodies of the audit witness routes: the signed checkpoint and a verify against one."""

from pydantic import BaseModel, ConfigDict

from tether.protocol.checkpoint import CheckpointDocument, SignedCheckpoint
from tether.server.api.schemas import VerifyOut


class VerifyAgainst(BaseModel):
    """A checkpoint a witness kept (the CLI's memory, an exported file, a SIEM's copy)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: SignedCheckpoint | None = None


class WitnessOut(BaseModel):
    """The log compared with the witness's checkpoint; `reason` says why it does not extend it,
    completing "The audit log does not extend the checkpoint ... at record N: "."""

    extends: bool
    genuine: bool
    checkpoint_seq: int
    head_seq: int
    reason: str
    # When the log extends the checkpoint only because of a recorded restore: which one.
    note: str = ""


class KeyRotationOut(BaseModel):
    """A recorded audit key rotation: what it states (base64 of the signed bytes: JSON naming
    the old and the new public key) and the signatures of both keys over it, so a witness that
    knows the old key can move to the new one without taking the platform's word for it."""

    seq: int
    statement: str
    old_signature: str
    new_signature: str


class WitnessVerifyOut(VerifyOut):
    """The whole-chain check, the platform's current checkpoint and public key (what a witness
    keeps for next time), and the witness comparison when the chain is intact."""

    signed: CheckpointDocument | None
    witness: WitnessOut | None
    key_rotations: list[KeyRotationOut] = []
