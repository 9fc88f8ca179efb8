"""Session History: the audit log newest first, filters, full details, and chain verification.

Responders only; a refusal is audited under the same action as the API's (`audit.read_denied`).
"""

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from tether.protocol import Permission
from tether.server.api.audit_filters import JSON_LINES, audit_search, export_stream, filter_fields
from tether.server.api.deps import PlatformDep
from tether.server.errors import Invalid
from tether.server.services.audit import AuditRecord
from tether.server.services.checkpoints import key_fingerprint
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.templating import render

router = APIRouter()
AuditReader = Annotated[
    User, Depends(page_require(Permission.AUDIT_READ, audit_refusal="audit.read_denied"))
]
SHOWN = 200
EXPORT_NAME = "tether-audit.jsonl"


def _details(record: AuditRecord) -> list[tuple[str, Any]]:
    """The record's details as (name, value) pairs; long text stays whole, and a script run's
    source comes out of its arguments as the script itself, to read as written."""
    try:
        parsed = json.loads(record.details) if record.details else {}
    except ValueError:
        return [("details", record.details)]
    if not isinstance(parsed, dict):
        return [("details", record.details)]
    pairs: list[tuple[str, Any]] = []
    args = parsed.get("args")
    if isinstance(args, dict) and isinstance(args.get("source"), str):
        pairs.append(("script", args["source"]))
        parsed["args"] = {k: v for k, v in args.items() if k != "source"}
    return pairs + [
        (str(k), v if isinstance(v, str) else json.dumps(v, indent=2, ensure_ascii=False))
        for k, v in parsed.items()
    ]


def _submitted(record: AuditRecord) -> str:
    """For a job submission, the action it asked for ("script.run"); for a job's outcome, the
    action and how it ended ("script.run: failed, exit code 3"); else nothing."""
    details = record.details_object()
    asked = details.get("action") if record.action in ("job.submit", "job.outcome") else None
    if not isinstance(asked, str):
        return ""
    if record.action == "job.submit":
        return asked
    said = f"{asked}: {details.get('state')}"
    if isinstance(details.get("exit_code"), int):
        said += f", exit code {details['exit_code']}"
    return said


@router.get("/session-history")
async def history(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    fields = filter_fields(request.query_params)
    kinds = await platform.audit.action_families()
    error = None
    try:
        search = await audit_search(platform, fields)
    except Invalid as e:
        error = str(e)
    records = [] if error else await platform.audit.newest(search, limit=SHOWN)
    rows = [(r, _details(r), _submitted(r)) for r in records]
    return render(
        request,
        "session_history.html",
        422 if error else 200,
        rows=rows,
        f=fields,
        kinds=kinds,
        error=error,
        shown=SHOWN,
        export_query=urlencode({k: v for k, v in fields.items() if v}),
    )


@router.get("/session-history/export")
async def export(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    """The records the page's filters match, all of them in chain order, as the API's export
    (JSON lines) and as a download; not audited, as the API's export is not."""
    try:
        lines = await export_stream(platform, filter_fields(request.query_params))
    except Invalid as e:
        return render(request, "message.html", 422, heading="Cannot export", message=str(e))
    return StreamingResponse(
        lines,
        media_type=JSON_LINES,
        headers={"Content-Disposition": f'attachment; filename="{EXPORT_NAME}"'},
    )


@router.get("/session-history/verify")
async def verify(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    """The chain's verdict, as a fragment the Verify button puts on the page."""
    report = await platform.audit.verify()
    signer = platform.audit.signer
    # What to compare with a checkpoint kept elsewhere (ADR 0032): this check alone cannot see
    # its own checkpoint file rolled back.
    return render(
        request,
        "verify_result.html",
        report=report,
        signed=signer.latest(),
        key_sha256=key_fingerprint(signer.public_key_pem()),
    )
