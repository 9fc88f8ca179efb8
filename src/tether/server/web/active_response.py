"""The Active Response page: the hosts table with filters, selection, isolation actions, and
for admins a ping of the ticked hosts."""

import statistics
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import Permission
from tether.protocol.hostnames import shared_hostnames
from tether.protocol.isolation import IsolationMode
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Invalid, NotFound, PlatformError
from tether.server.services.hosts import HostView
from tether.server.services.isolation import ISOLATE, RELEASE
from tether.server.services.jobs import BatchView, Selection
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.templating import render

router = APIRouter()
Reader = Annotated[User, Depends(page_require(Permission.HOSTS_READ))]
# Pinging is the admins' (as `POST /api/v1/hosts/ping`): it reaches every ticked agent.
Pinger = Annotated[User, Depends(page_require(Permission.HOSTS_MANAGE))]
# The page waits for the answers: a connected agent answers in milliseconds.
PING_SECONDS = 5.0
ISOLATION_STATES = ("not isolated", "isolated", "isolation pending", "unisolation pending")
# What each Actions button asks for, as the confirmation names it.
ACTIONS = {
    "isolate-outbound": "Isolation (outbound)",
    "isolate-full": "Isolation (full)",
    "unisolate": "Unisolation",
}
# What the confirmation's button says: the question names the hosts, the button the act.
CONFIRMS = {
    "isolate-outbound": "Isolate (outbound), with this reason",
    "isolate-full": "Isolate (full), with this reason",
    "unisolate": "Unisolate, with this reason",
}
# Not an isolation request: it opens the Run form with the ticked hosts.
RUN_SCRIPT = "run-script"
# What the confirmation after the redirect names each kind of request.
REQUESTED = {ISOLATE: "Isolation", RELEASE: "Unisolation"}
PICK_HOSTS = "Select at least one host first."
GIVE_REASON = "Give a reason (a ticket, a detection): it goes into the audit record."


@dataclass(frozen=True)
class Confirmation:
    """The question an isolation action asks before anything is sent (docs/adr/0047)."""

    action: str
    requested: str
    button: str
    hosts: list[HostView]
    reason: str


@dataclass(frozen=True)
class Filters:
    """What the responder narrowed the table to; empty means any."""

    segment: str = ""
    os: str = ""
    online: str = ""
    state: str = ""
    q: str = ""

    def admits(self, host: HostView) -> bool:
        if self.segment and host.segment != self.segment:
            return False
        if self.os and host.os_family != self.os:
            return False
        if self.online and host.online != (self.online == "yes"):
            return False
        if self.state and host.isolation.state != self.state:
            return False
        needle = self.q.strip().lower()
        searched = (host.hostname, host.id, host.os_name, *host.addresses)
        return not needle or any(needle in text.lower() for text in searched)


def _field(values: dict[str, str], name: str) -> str:
    return values.get(name, "")[:200]


async def _pairs(request: Request) -> list[tuple[str, str]]:
    if request.method == "POST":
        form = await request.form()
        return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    return list(request.query_params.multi_items())


async def _read(request: Request) -> tuple[Filters, set[str], str]:
    """Filters, selected hosts and the chosen action from the query string or the form."""
    pairs = await _pairs(request)
    values = dict(pairs)
    filters = Filters(
        segment=_field(values, "segment"),
        os=_field(values, "os"),
        online=_field(values, "online"),
        state=_field(values, "state"),
        q=_field(values, "q"),
    )
    selected = {v for k, v in pairs if k == "host"}
    return filters, selected, _field(values, "action")


async def _table(
    request: Request, platform: PlatformDep, filters: Filters, selected: set[str]
) -> dict[str, Any]:
    hosts = await platform.hosts.list()
    live = [h for h in hosts if not h.revoked]
    shown = [h for h in live if filters.admits(h)]
    return {
        "hosts": shown,
        # Names two live hosts share (a re-imaged machine): their rows also show the id.
        "shared_names": shared_hostnames((h.hostname, h.id) for h in live),
        "total": len([h for h in hosts if not h.revoked]),
        "selected": selected,
        "filters": filters,
        "segments": sorted({h.segment for h in hosts}),
        "oses": sorted({h.os_family for h in hosts}),
        "states": ISOLATION_STATES,
        # A platform of several nodes shows which one holds each agent (docs/adr/0050).
        "show_nodes": platform.nodes is not None,
    }


async def _own_request(platform: PlatformDep, user: User, batch_id: str) -> BatchView | None:
    """The isolation request the user just made (after the redirect from the action)."""
    if not batch_id:
        return None
    try:
        batch = await platform.jobs.batch(batch_id[:64])
    except NotFound:
        return None
    if batch.action not in REQUESTED or batch.created_by != user.actor:
        return None
    return batch


@router.get("/active-response")
async def page(request: Request, platform: PlatformDep, user: Reader) -> Response:
    filters, selected, _ = await _read(request)
    table = await _table(request, platform, filters, selected)
    outcome = await _own_request(platform, user, request.query_params.get("batch", ""))
    requested = REQUESTED[outcome.action] if outcome else ""
    return render(
        request,
        "active_response.html",
        outcome=outcome,
        requested=requested,
        error=None,
        ping=None,
        question=None,
        **table,
    )


@router.get("/active-response/hosts")
async def hosts_fragment(request: Request, platform: PlatformDep, _user: Reader) -> Response:
    """The table's rows alone, polled by the page so pending states change without a reload."""
    filters, selected, _ = await _read(request)
    table = await _table(request, platform, filters, selected)
    return render(request, "hosts_rows.html", **table)


@router.post("/active-response/actions")
async def act(request: Request, platform: PlatformDep, user: Reader) -> Response:
    """Isolate or release the selected hosts; the service decides who may, and says why not.

    The first press only asks, on the page (no script dialog under the CSP), for a reason; the
    second, with `confirm=yes` and the reason, sends the request with the reason in its record.
    """
    filters, selected, action = await _read(request)
    values = dict(await _pairs(request))
    confirmed = values.get("confirm") == "yes"
    reason = values.get("reason", "").strip()
    error: str | None = None
    outcome: BatchView | None = None
    question: Confirmation | None = None
    status = 200
    if action == RUN_SCRIPT and selected:
        # The Run form takes the ticked hosts; the script is picked there.
        hosts = urlencode([("host", h) for h in sorted(selected)])
        return RedirectResponse(f"/scripts/-/run?{hosts}", status_code=303)
    if action not in ACTIONS and action != RUN_SCRIPT:
        error, status = "Choose Isolate, Unisolate or Run script.", 422
    elif not selected:
        error, status = PICK_HOSTS, 422
    else:
        chosen: list[HostView] = []
        try:
            chosen = [await platform.hosts.get(ref) for ref in sorted(selected)]
            if not confirmed or not reason:
                question = Confirmation(
                    action=action,
                    requested=ACTIONS[action],
                    button=CONFIRMS[action],
                    hosts=chosen,
                    reason=reason[:500],
                )
                if confirmed:
                    error, status = GIVE_REASON, 422
            else:
                selection = Selection(host_ids=[h.id for h in chosen])
                if action == "unisolate":
                    outcome = await platform.isolation.release(
                        user, selection, source=source_of(request), reason=reason
                    )
                else:
                    mode = (
                        IsolationMode.FULL if action == "isolate-full" else IsolationMode.OUTBOUND
                    )
                    outcome = await platform.isolation.isolate(
                        user, selection, mode, source=source_of(request), reason=reason
                    )
        except Invalid as e:
            # A reason the service refused (a second line, too long): asked again, as typed.
            error, status = str(e), e.status_code
            if chosen:
                question = Confirmation(
                    action, ACTIONS[action], CONFIRMS[action], chosen, reason[:500]
                )
        except PlatformError as e:
            error, status = str(e), e.status_code
    if outcome is not None and not outcome.refused:
        # Post/redirect/get: reloading the page must not send the request again.
        query = {k: v for k, v in vars(filters).items() if v} | {"batch": outcome.id}
        return RedirectResponse(f"/active-response?{urlencode(query)}", status_code=303)
    keep = selected if error or question else set()
    table = await _table(request, platform, filters, keep)
    return render(
        request,
        "active_response.html",
        status,
        outcome=outcome,
        requested=ACTIONS.get(action, ""),
        error=error,
        ping=None,
        question=question,
        **table,
    )


@dataclass(frozen=True)
class PingResult:
    """A ping's report as the page shows it: hosts by name, round trips in milliseconds."""

    asked: int
    answered: int
    seconds: float
    failed: list[tuple[str, str]]
    p50_ms: float | None
    max_ms: float | None


@router.post("/active-response/ping")
async def ping(request: Request, platform: PlatformDep, user: Pinger) -> Response:
    """Round-trip a no-op to the ticked hosts and show who answered. Nothing changes on the
    endpoints, so the report is the answer itself (no redirect): sending it again only pings."""
    filters, selected, _ = await _read(request)
    result: PingResult | None = None
    error: str | None = None
    status = 200
    if not selected:
        error, status = PICK_HOSTS, 422
    else:
        try:
            hosts = [await platform.hosts.get(ref) for ref in sorted(selected)]
            report = await platform.reachability.ping(
                [h.id for h in hosts],
                timeout=PING_SECONDS,
                actor=user.actor,
                source=source_of(request),
            )
        except PlatformError as e:
            error, status = str(e), e.status_code
        else:
            names = {h.id: h.hostname for h in hosts}
            trips = report.round_trips_ms
            result = PingResult(
                asked=report.asked,
                answered=report.answered,
                seconds=report.seconds,
                failed=sorted((names.get(h, h), why) for h, why in report.failed.items()),
                p50_ms=statistics.median(trips) if trips else None,
                max_ms=max(trips) if trips else None,
            )
    table = await _table(request, platform, filters, selected)
    return render(
        request,
        "active_response.html",
        status,
        outcome=None,
        requested="",
        error=error,
        ping=result,
        question=None,
        **table,
    )
