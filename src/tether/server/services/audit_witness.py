"""Does the audit log extend a checkpoint a witness kept? (docs/adr/0032-audit-witnesses.md)

The platform's own check compares the chain with the checkpoint in its data directory; someone
who can write that directory but has no signing key can put an older genuine checkpoint back,
delete or rewrite every later record, and the next action signs the forged head. A checkpoint
kept elsewhere (the CLI's memory, an exported file, a SIEM) is still genuine and names a record
the forged log no longer holds with that hash, or no longer holds at all: that is what is checked
here, record by record, without trusting the anchor file.
"""

from dataclasses import dataclass
from datetime import datetime

from tether.server.services.audit import AuditLog
from tether.server.services.audit_statements import restore_note
from tether.server.services.checkpoints import Checkpoint, public_key_from_pem


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
    # Set when the log extends the checkpoint only because a recorded restore cut it: the
    # restore's sentence (the witness saw records that the restore took back).
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def foreign_key(public_key_pem: str, log: AuditLog) -> bool:
    """True when `public_key_pem` is not this platform's audit key (or not a key at all)."""
    try:
        given = public_key_from_pem(public_key_pem)
    except ValueError:
        return True
    return given != log.signer.public_key and not any(
        given == old for old in log.signer.keys_for(0)[1:]
    )


async def check_witness(log: AuditLog, checkpoint: Checkpoint, head_seq: int) -> WitnessReport:
    """Whether the log, whose head is `head_seq`, still holds `checkpoint`'s record with its
    hash; a checkpoint not signed by this platform's key is never taken as evidence."""

    def report(reason: str, genuine: bool = True) -> WitnessReport:
        return WitnessReport(not reason, genuine, checkpoint.seq, head_seq, reason)

    if not log.signer.is_genuine(checkpoint):
        return report("it is not signed by this platform's audit key.", genuine=False)
    if checkpoint.seq == 0:
        return report("")
    if head_seq < checkpoint.seq:
        reason = f"the log ends at record {head_seq}, before it; records were deleted."
    else:
        record = await log.record_at(checkpoint.seq)
        if record is None:
            reason = f"record {checkpoint.seq} is gone; records were deleted."
        elif record.hash != checkpoint.hash:
            reason = (
                f"record {checkpoint.seq} now has a different hash; records were rewritten or "
                "the checkpoint was rolled back."
            )
        else:
            return report("")
    note = await _explaining_restore(log, checkpoint)
    if note:
        return WitnessReport(True, True, checkpoint.seq, head_seq, "", note)
    return report(reason)


async def _explaining_restore(log: AuditLog, checkpoint: Checkpoint) -> str:
    """The sentence of a restore that took back the witnessed record: a genuine restore record
    (verify checks its signature) from a backup whose head is before the checkpoint, written
    after the checkpoint was signed; "" when none explains it."""
    signed = _moment(checkpoint.signed_at)
    for record in await log.restores():
        details = record.details_object()
        head = details.get("head_seq")
        restored = _moment(str(details.get("restored_at", "")))
        if not isinstance(head, int) or head >= checkpoint.seq or signed is None:
            continue
        if restored is not None and restored >= signed:
            return restore_note(record.seq, details)
    return ""


def _moment(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
