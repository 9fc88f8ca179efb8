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
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.templating import render

router = APIRouter()
AuditReader = Annotated[
    User, Depends(page_require(Permission.AUDIT_READ, audit_refusal="audit.read_denied"))
]
SHOWN = 200
# A host filter matching more hosts than this is too vague to be worth a query per host.
MAX_HOSTS = 50
BAD_TIME = "Write times as YYYY-MM-DDTHH:MM (UTC)."


def _time(text: str) -> datetime | None:
    """A datetime-local field's value, read as UTC; ValueError when it is not one."""
    if not text:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


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
    """For a job submission, the action it asked for ("script.run"); else nothing."""
    asked = record.details_object().get("action") if record.action == "job.submit" else None
    return asked if isinstance(asked, str) else ""


async def _host_mentions(platform: Platform, text: str) -> tuple[str, ...]:
    """What a record about the host `text` names: the text itself, and the id of each host
    whose name contains it (records name hosts by id)."""
    if not text:
        return ()
    wanted = text.casefold()
    ids = [h.id for h in await platform.hosts.list() if wanted in h.hostname.casefold()]
    return (text, *ids[:MAX_HOSTS])


@router.get("/session-history")
async def history(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    query = request.query_params
    names = ("actor", "target", "kind", "action", "since", "until")
    fields = {n: query.get(n, "")[:200] for n in names}
    kinds = await platform.audit.action_families()
    error = None
    try:
        since, until = _time(fields["since"]), _time(fields["until"])
    except ValueError:
        since = until = None
        error = BAD_TIME
    kind = f"{fields['kind']}." if fields["kind"] else ""
    action = fields["action"] or kind
    search = AuditSearch(
        actor=fields["actor"],
        mentions=await _host_mentions(platform, fields["target"]),
        action=action,
        since=since,
        until=until,
    )
    # An action of another kind than the one chosen matches nothing.
    contradictory = not action.startswith(kind)
    records = [] if error or contradictory else await platform.audit.newest(search, limit=SHOWN)
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
    )


@router.get("/session-history/verify")
async def verify(request: Request, platform: PlatformDep, _user: AuditReader) -> Response:
    """The chain's verdict, as a fragment the Verify button puts on the page."""
    report = await platform.audit.verify()
    return render(request, "verify_result.html", report=report)
