"""Does the audit log extend a checkpoint a witness kept? (docs/adr/0032-audit-witnesses.md)

The platform's own check compares the chain with the checkpoint in its data directory; someone
who can write that directory but has no signing key can put an older genuine checkpoint back,
delete or rewrite every later record, and the next action signs the forged head. A checkpoint
kept elsewhere (the CLI's memory, an exported file, a SIEM) is still genuine and names a record
the forged log no longer holds with that hash, or no longer holds at all: that is what is checked
here, record by record, without trusting the anchor file.
"""

from dataclasses import dataclass

from tether.server.services.audit import AuditLog
from tether.server.services.checkpoints import Checkpoint, public_key_from_pem, signed_by


@dataclass(frozen=True)
class WitnessReport:
    """The log compared with one witnessed checkpoint. `reason` completes a sentence that begins
    "The audit log does not extend the checkpoint ... at record N: " (empty when it extends)."""

    extends: bool
    # False when the checkpoint is not signed by this platform's key: no evidence either way.
    genuine: bool
    checkpoint_seq: int
    head_seq: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def foreign_key(public_key_pem: str, log: AuditLog) -> bool:
    """True when `public_key_pem` is not this platform's audit key (or not a key at all)."""
    try:
        given = public_key_from_pem(public_key_pem)
    except ValueError:
        return True
    return given != log.signer.public_key


async def check_witness(log: AuditLog, checkpoint: Checkpoint, head_seq: int) -> WitnessReport:
    """Whether the log, whose head is `head_seq`, still holds `checkpoint`'s record with its
    hash; a checkpoint not signed by this platform's key is never taken as evidence."""

    def report(reason: str, genuine: bool = True) -> WitnessReport:
        return WitnessReport(not reason, genuine, checkpoint.seq, head_seq, reason)

    if not signed_by(log.signer.public_key, checkpoint):
        return report("it is not signed by this platform's audit key.", genuine=False)
    if checkpoint.seq == 0:
        return report("")
    if head_seq < checkpoint.seq:
        return report(f"the log ends at record {head_seq}, before it; records were deleted.")
    record = await log.record_at(checkpoint.seq)
    if record is None:
        return report(f"record {checkpoint.seq} is gone; records were deleted.")
    if record.hash != checkpoint.hash:
        return report(
            f"record {checkpoint.seq} now has a different hash; records were rewritten or the "
            "checkpoint was rolled back."
        )
    return report("")
