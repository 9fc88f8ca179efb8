"""Reading, verifying and exporting the audit log."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from tether.protocol import Permission
from tether.server.api.audit_filters import FIELD_LIMIT, JSON_LINES, export_stream
from tether.server.api.deps import PlatformDep, require
from tether.server.api.schemas import AuditRecordOut, VerifyOut
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
