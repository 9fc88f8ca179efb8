"""Records that explain a break in what witnesses saw: a restore and an audit key rotation.

A chain record alone is only hashes: anyone who can write the database can add one and compute
the chain again. These two records change how the log must be read (records a witness saw are
gone; checkpoints from here on are signed by another key), so each also carries a signature by
the audit key over what it states, and `verify` checks that signature; someone without the key
cannot explain away a rollback as a restore, nor slip in a key of their own.
"""

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature

from tether.server.services.checkpoints import CheckpointSigner, public_key_from_pem, public_pem

RESTORE = "platform.restore"
ROTATE_KEY = "platform.rotate_key"
_SIGNATURES = ("signature", "old_signature", "new_signature")


def statement_message(action: str, details: dict[str, Any]) -> bytes:
    """The bytes a restore or rotation record's signatures cover: its details without them."""
    body = {k: v for k, v in details.items() if k not in _SIGNATURES}
    return (
        f"tether {action} v1\n".encode()
        + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    )


def restore_note(seq: int, details: dict[str, Any]) -> str:
    return (
        f"Record {seq}: the platform was restored from the backup taken at "
        f"{details.get('backup_taken_at')} (head {details.get('head_seq')}); records after "
        f"{details.get('head_seq')} that a witness saw before {details.get('restored_at')} are "
        "gone because of that restore, not an attack."
    )


def statement_problem(
    signer: CheckpointSigner, seq: int, prev_hash: str, action: str, details: dict[str, Any]
) -> str | None:
    """One sentence when record `seq` (a restore or a key rotation) is not what it claims;
    None when it is genuine (or not such a record)."""
    message = statement_message(action, details)
    if action == RESTORE:
        if details.get("head_seq") != seq - 1 or details.get("head_hash") != prev_hash:
            return f"Record {seq} claims a restore but does not follow the backup's head."
        if not signer.statement_genuine(message, str(details.get("signature", "")), seq):
            return f"Record {seq} claims a restore but is not signed by the platform's audit key."
        return None
    if action == ROTATE_KEY and details.get("key") == "audit":
        if details.get("head_seq") != seq - 1 or details.get("head_hash") != prev_hash:
            return f"Record {seq} claims an audit key rotation but does not follow its head."
        old_pem = str(details.get("old_public_key", "")).strip()
        new_pem = str(details.get("new_public_key", "")).strip()
        signed_by_both = (
            old_pem != new_pem
            and _signed(old_pem, details.get("old_signature"), message)
            and _signed(new_pem, details.get("new_signature"), message)
        )
        if not signed_by_both:
            return (
                f"Record {seq} claims an audit key rotation that is not signed by both the old "
                "and the new key."
            )
        # The old key must be the one that was in charge before the record, the new one a key
        # this platform holds or lists as retired.
        in_charge = [public_pem(k) for k in signer.keys_for(seq - 1)]
        if old_pem not in in_charge or not signer.knows_key(new_pem):
            return (
                f"Record {seq} rotated the audit key between keys this platform does not hold "
                "or list as retired."
            )
    return None


def _signed(pem: str, signature: object, message: bytes) -> bool:
    try:
        public_key_from_pem(pem).verify(base64.b64decode(str(signature), validate=True), message)
    except (ValueError, InvalidSignature):
        return False
    return True


def statement_note(seq: int, action: str, details: dict[str, Any]) -> str | None:
    """The plain sentence `verify` adds for a genuine restore or rotation record."""
    if action == RESTORE:
        return restore_note(seq, details)
    if action == ROTATE_KEY and details.get("key") == "audit":
        return (
            f"Record {seq}: the audit key was rotated at {details.get('rotated_at')}; "
            f"checkpoints up to record {details.get('head_seq')} are checked with the old key."
        )
    if action == ROTATE_KEY and details.get("key") == "mfa":
        return (
            f"Record {seq}: the MFA sealing key was rotated at {details.get('rotated_at')} "
            f"({details.get('secrets')} secrets sealed anew)."
        )
    return None
