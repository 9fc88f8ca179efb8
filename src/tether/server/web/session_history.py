"""Session History: the audit log newest first, filters, full details, and chain verification.

Responders only; a refusal is audited under the same action as the API's (`audit.read_denied`).
"""

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep
from tether.server.services.audit import AuditRecord, AuditSearch
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.templating import render

router = APIRouter()
AuditReader = Annotated[
    User, Depends(page_require(Permission.AUDIT_READ, audit_refusal="audit.read_denied"))
]
SHOWN = 200
BAD_TIME = "Write times as YYYY-MM-DDTHH:MM (UTC)."


def _time(text: str) -> datetime | None:
    """A datetime-local field's value, read as UTC; ValueError when it is not one."""
    if not text:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _details(record: AuditRecord) -> list[tuple[str, Any]]:
    """The record's details as (name, value) pairs; long text (a script) stays whole."""
    try:
        parsed = json.loads(record.details) if record.details else {}
    except ValueError:
        return [("details", record.details)]
    if not isinstance(parsed, dict):
        return [("details", record.details)]
    return [
        (str(k), v if isinstance(v, str) else json.dumps(v, indent=2, ensure_ascii=False))
        for k, v in parsed.items()
    ]


@router.get("/session-history")
async def history(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    query = request.query_params
    fields = {n: query.get(n, "")[:200] for n in ("actor", "target", "action", "since", "until")}
    error = None
    try:
        since, until = _time(fields["since"]), _time(fields["until"])
    except ValueError:
        since = until = None
        error = BAD_TIME
    search = AuditSearch(
        actor=fields["actor"],
        target=fields["target"],
        action=fields["action"],
        since=since,
        until=until,
    )
    records = [] if error else await platform.audit.newest(search, limit=SHOWN)
    rows = [(r, _details(r)) for r in records]
    return render(
        request,
        "session_history.html",
        422 if error else 200,
        rows=rows,
        f=fields,
        error=error,
        shown=SHOWN,
    )


@router.get("/session-history/verify")
async def verify(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    """The chain's verdict, as a fragment the Verify button puts on the page."""
    report = await platform.audit.verify()
    return render(request, "verify_result.html", report=report)
