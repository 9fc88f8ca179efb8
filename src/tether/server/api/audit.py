"""Reading, verifying and exporting the audit log."""

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from tether.protocol import Permission
from tether.protocol.checkpoint import CheckpointDocument
from tether.server.api.audit_filters import FIELD_LIMIT, JSON_LINES, export_stream
from tether.server.api.audit_schemas import (
    KeyRotationOut,
    VerifyAgainst,
    WitnessOut,
    WitnessVerifyOut,
)
from tether.server.api.deps import PlatformDep, require
from tether.server.api.schemas import AuditRecordOut, VerifyOut
from tether.server.errors import Conflict
from tether.server.services.audit_statements import statement_message
from tether.server.services.audit_witness import check_witness
from tether.server.services.checkpoints import Checkpoint
from tether.server.services.platform import Platform
from tether.server.services.users import User

router = APIRouter(tags=["audit"])
# A refusal here is itself audited: who tried to read the Session History matters.
AuditReader = Annotated[
    User, Depends(require(Permission.AUDIT_READ, audit_refusal="audit.read_denied"))
]


@router.get("/audit", response_model=list[AuditRecordOut])
async def list_records(
    platform: PlatformDep,
    _user: AuditReader,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditRecordOut]:
    return [
        AuditRecordOut(**r.to_json())
        async for r in platform.audit.iter_records(after_seq=after, limit=limit)
    ]


@router.get("/audit/verify", response_model=VerifyOut)
async def verify(platform: PlatformDep, _user: AuditReader) -> VerifyOut:
    return VerifyOut(**(await platform.audit.verify()).to_json())


def _signed(platform: Platform) -> CheckpointDocument | None:
    """The platform's current checkpoint with its public key; None before the first one or
    when its file is damaged (the chain's verify says which)."""
    signer = platform.audit.signer
    latest = signer.latest()
    if latest is None or latest.seq < 0:
        return None
    return CheckpointDocument(
        seq=latest.seq,
        hash=latest.hash,
        signed_at=latest.signed_at,
        signature=latest.signature,
        public_key=signer.public_key_pem(),
    )


@router.get("/audit/checkpoint", response_model=CheckpointDocument)
async def checkpoint(platform: PlatformDep, _user: AuditReader) -> CheckpointDocument:
    """The newest signed checkpoint and the platform's audit public key: keep it somewhere the
    platform's host cannot write and verify against it later (POST /audit/verify)."""
    signed = _signed(platform)
    if signed is None:
        raise Conflict(
            "The platform has no readable signed checkpoint; run 'tether audit verify' to see why."
        )
    return signed


@router.post("/audit/verify", response_model=WitnessVerifyOut)
async def verify_against(
    platform: PlatformDep, _user: AuditReader, body: VerifyAgainst
) -> WitnessVerifyOut:
    """Check the whole chain and, when it is intact, whether it still extends a checkpoint kept
    elsewhere (the platform's own checkpoint file can be rolled back; a witness's cannot)."""
    signed = _signed(platform)
    report = await platform.audit.verify()
    witness: WitnessOut | None = None
    given = body.checkpoint
    if given is not None and report.intact:
        kept = Checkpoint(given.seq, given.hash, given.signed_at, given.signature)
        result = await check_witness(platform.audit, kept, report.head_seq)
        witness = WitnessOut(
            extends=result.extends,
            genuine=result.genuine,
            checkpoint_seq=result.checkpoint_seq,
            head_seq=result.head_seq,
            reason=result.reason,
            note=result.note,
        )
    rotations = [
        KeyRotationOut(
            seq=r.seq,
            statement=base64.b64encode(statement_message(r.action, r.details_object())).decode(),
            old_signature=str(r.details_object().get("old_signature", "")),
            new_signature=str(r.details_object().get("new_signature", "")),
        )
        for r in await platform.audit.key_rotations()
    ]
    return WitnessVerifyOut(
        **report.to_json(), signed=signed, witness=witness, key_rotations=rotations
    )


@router.get("/audit/export")
async def export(
    platform: PlatformDep,
    _user: AuditReader,
    actor: Annotated[str, Query(max_length=FIELD_LIMIT)] = "",
    target: Annotated[str, Query(max_length=FIELD_LIMIT)] = "",
    kind: Annotated[str, Query(max_length=FIELD_LIMIT)] = "",
    action: Annotated[str, Query(max_length=FIELD_LIMIT)] = "",
    since: Annotated[str, Query(max_length=FIELD_LIMIT)] = "",
    until: Annotated[str, Query(max_length=FIELD_LIMIT)] = "",
) -> StreamingResponse:
    """Every record as JSON lines, in chain order, streamed; the Session History's filters
    (user, host or target, kind, action, UTC times) narrow it to the records they match."""
    fields = {"actor": actor, "target": target, "kind": kind}
    fields |= {"action": action, "since": since, "until": until}
    return StreamingResponse(await export_stream(platform, fields), media_type=JSON_LINES)
