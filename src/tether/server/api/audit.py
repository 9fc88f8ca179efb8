"""Reading, verifying and exporting the audit log."""

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from tether.protocol import Permission
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
async def export(platform: PlatformDep, _user: AuditReader) -> StreamingResponse:
    """Every record as JSON lines, in chain order, streamed."""

    async def lines() -> AsyncIterator[bytes]:
        async for record in platform.audit.iter_records():
            yield (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
