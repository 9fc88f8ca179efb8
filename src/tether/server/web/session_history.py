"""Session History: the audit log newest first, filters, full details, and chain verification.

Responders only; a refusal is audited under the same action as the API's (`audit.read_denied`).
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from tether.protocol import Permission
from tether.protocol.hostnames import shared_hostnames
from tether.protocol.what_ran import what_ran
from tether.server.api.audit_filters import JSON_LINES, audit_search, export_stream, filter_fields
from tether.server.api.deps import PlatformDep
from tether.server.errors import Invalid
from tether.server.services.audit import AuditRecord
from tether.server.services.checkpoints import key_fingerprint
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.numbers import whole_number
from tether.server.web.templating import render, when

router = APIRouter()
AuditReader = Annotated[
    User, Depends(page_require(Permission.AUDIT_READ, audit_refusal="audit.read_denied"))
]
SHOWN = 200
EXPORT_NAME = "tether-audit.jsonl"
BAD_PAGE = "The page link is not valid; start again from the newest records."


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


@dataclass(frozen=True)
class Row:
    """One record as the table shows it: its time to the second, its target by name."""

    record: AuditRecord
    time: str
    target: str
    details: list[tuple[str, Any]]
    submitted: str


def _time(ts: str) -> str:
    """The record's ISO time, as the other pages print times (UTC, to the second)."""
    try:
        return when(datetime.fromisoformat(ts).astimezone(UTC))
    except ValueError:
        return ts


async def _target_names(platform: PlatformDep, records: list[AuditRecord]) -> dict[str, str]:
    """Names for the targets that are ids: a host by its hostname, a batch by what it ran."""
    known = await platform.hosts.list()
    # A name two hosts share (a re-imaged machine and its old record) carries the id's start.
    shared = shared_hostnames((h.hostname, h.id) for h in known)
    hostnames = {
        h.id: f"{h.hostname} ({h.id[:8]})" if h.hostname in shared else h.hostname for h in known
    }
    batch_ids = {r.target[6:] for r in records if r.target.startswith("batch:")}
    batches = await platform.jobs.batch_summaries(batch_ids)
    names: dict[str, str] = {}
    for record in records:
        kind, _, ident = record.target.partition(":")
        if record.target in hostnames:
            names[record.target] = hostnames[record.target]
        elif kind == "host" and ident in hostnames:
            names[record.target] = f"host {hostnames[ident]}"
        elif kind == "batch" and ident in batches:
            names[record.target] = f"batch: {batches[ident]}"
    return names


def _submitted(record: AuditRecord) -> str:
    """For a job submission, what it ran ("cat /etc/hosts"); for a job's outcome, the action
    and how it ended ("script.run: failed, exit code 3"); else nothing."""
    details = record.details_object()
    asked = details.get("action") if record.action in ("job.submit", "job.outcome") else None
    if not isinstance(asked, str):
        return ""
    if record.action == "job.submit":
        # What it ran, as typed or chosen ("cat /etc/hosts"), rather than "script.run".
        args = details.get("args")
        return what_ran(asked, args if isinstance(args, dict) else None)
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
    asked_before = request.query_params.get("before", "")
    before = whole_number(asked_before[:20])
    if asked_before and before is None and error is None:
        error = BAD_PAGE
    records = [] if error else await platform.audit.newest(search, limit=SHOWN, before=before)
    names = await _target_names(platform, records)
    rows = [
        Row(r, _time(r.ts), names.get(r.target, r.target), _details(r), _submitted(r))
        for r in records
    ]
    filters = {k: v for k, v in fields.items() if v}
    # A full page may have older records behind it: the next page starts below its last one.
    older = urlencode(filters | {"before": records[-1].seq}) if len(records) == SHOWN else ""
    return render(
        request,
        "session_history.html",
        422 if error else 200,
        rows=rows,
        f=fields,
        kinds=kinds,
        error=error,
        shown=SHOWN,
        paged=before is not None,
        older=older,
        newest=urlencode(filters),
        export_query=urlencode(filters),
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
