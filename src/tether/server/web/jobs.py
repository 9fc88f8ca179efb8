"""The Jobs pages: recent jobs across hosts (its rows refreshed while one has not ended), one job
with its arguments and output (refreshed likewise), and cancel; the browser's `tether jobs`, `tether job show` and `tether
job cancel` (docs/adr/0024). Requests awaiting a second person's approval are listed above the
jobs for those who may decide them, with Approve and Reject (docs/adr/0039).

Reading needs results.read, as GET /api/v1/jobs does. Cancelling needs active_response, as POST
/api/v1/jobs/{id}/cancel does; `Jobs.cancel` then decides (second factor, already ended) and
audits, and the page shows its sentence when it says no.
"""

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import ACTIONS, AWAITING_APPROVAL, FINAL_STATES, UNFINISHED, Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Conflict, Invalid, NotFound, PlatformError
from tether.server.services.approvals import decider_refusal
from tether.server.services.jobs import JobView
from tether.server.services.platform import Platform
from tether.server.services.scripts import RUN_ACTION
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.job_output import shown_output
from tether.server.web.notice import done, forget_notice, read_notice
from tether.server.web.polled_rows import SEEN, digest, unchanged, unfinished
from tether.server.web.templating import render

router = APIRouter()
Reader = Annotated[User, Depends(page_require(Permission.RESULTS_READ))]
Responder = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE))]
SHOWN = 200
# Job ids are 32 hex digits; anything longer is not looked up at all.
ID_LIMIT = 64
# How many jobs one press of "Cancel the run" cancels (one audited service call each), so the
# request stays short on a run over the whole estate; pressing again cancels the next ones.
CANCEL_LIMIT = 500
# The state filter in a responder's words, as the job states it stands for ("all": no filter).
STATE_FILTERS: dict[str, list[str] | None] = {
    "all": None,
    "awaiting approval": [AWAITING_APPROVAL],
    "pending": ["queued"],
    "running": ["delivered", "running"],
    "finished": sorted(FINAL_STATES),
}
BAD_STATE = "Choose a state: awaiting approval, pending, running, finished or all."
# Where a cancel may send the browser back to: the Jobs list (with its filters), a job, a host.
# Anything else (another site, a crafted path) goes to the job's own page.
_BACK = re.compile(r"/(jobs(/[0-9a-f]{32})?|hosts/[0-9A-Za-z-]{1,64})(\?[^#\\\s]{0,2000})?")


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def responder(user: User) -> bool:
    """Whether the pages offer this user the Cancel buttons (the service still decides)."""
    return Permission.ACTIVE_RESPONSE in user.permissions


def pretty(value: Any) -> str:
    """JSON from a job's arguments or result, indented for reading (shown as text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


async def _filtered(platform: Platform, f: dict[str, str]) -> list[JobView]:
    """The jobs the filters ask for; Invalid, NotFound or Conflict (the host's sentence) when a
    filter names nothing."""
    if f["state"] not in STATE_FILTERS:
        raise Invalid(BAD_STATE)
    if f["action"] and f["action"] not in ACTIONS:
        raise NotFound(f"There is no action named {f['action']!r}.")
    host_id = (await platform.hosts.get(f["host"])).id if f["host"] else None
    return await platform.jobs.find(
        states=STATE_FILTERS[f["state"]],
        host_id=host_id,
        action=f["action"] or None,
        limit=SHOWN,
    )


def _filters(request: Request) -> dict[str, str]:
    query = request.query_params
    return {
        "state": query.get("state", "all")[:20] or "all",
        "host": query.get("host", "").strip()[:200],
        "action": query.get("action", "")[:64],
    }


def _rows(
    f: dict[str, str], found: list[JobView], user: User, row_error: str | None = None
) -> dict[str, Any]:
    """What the table's rows need: the jobs, the page a Cancel returns to (the list with its
    filters) and, while a shown job has not ended, the address of the next poll."""
    kept = [(k, v) for k, v in f.items() if v and (k, v) != ("state", "all")]
    poll = None
    if unfinished(found):
        poll = "/jobs/-/rows?" + urlencode([*kept, (SEEN, digest(found))])
    return {
        "f": f,
        "jobs": found,
        "final": FINAL_STATES,
        "responder": responder(user),
        "back": "/jobs" + (f"?{urlencode(kept)}" if kept else ""),
        "poll": poll,
        "row_error": row_error,
    }


@router.get("/jobs")
async def jobs_page(request: Request, platform: PlatformDep, user: Reader) -> Response:
    """Recent jobs across hosts, newest first, filtered by state, host and action."""
    f = _filters(request)
    status, error, found = 200, None, []
    try:
        found = await _filtered(platform, f)
    except PlatformError as e:
        status, error = e.status_code, str(e)
    # Only those who may decide see the requests: not the requester, not a lower tier.
    awaiting = await platform.approvals.pending_for(user) if responder(user) else []
    response = render(
        request,
        "jobs.html",
        status,
        states=list(STATE_FILTERS),
        actions=sorted(ACTIONS),
        shown=SHOWN,
        error=error,
        notice=read_notice(request),
        approvals=awaiting,
        **_rows(f, found, user),
    )
    forget_notice(request, response, path="/jobs")
    return response


@router.get("/jobs/-/rows")
async def jobs_rows(request: Request, platform: PlatformDep, user: Reader) -> Response:
    """The list's rows alone (the whole tbody), polled while one has not ended: an empty 204 when
    they are the ones the page shows, else the rows with the next poll, or without one once every
    shown job has ended. A filter that stopped naming anything is a row with its sentence, which
    ends the polling (htmx swaps only a 2xx answer, and would poll a 4xx one forever)."""
    f = _filters(request)
    try:
        found = await _filtered(platform, f)
    except PlatformError as e:
        return render(request, "jobs_rows.html", **_rows(f, [], user, str(e)))
    if unchanged(request, found):
        return Response(status_code=204)
    return render(request, "jobs_rows.html", **_rows(f, found, user))


async def _detail(platform: Platform, user: User, job_id: str) -> dict[str, Any]:
    """What the job page and its polled fragment show; NotFound for an unknown id."""
    job = await platform.jobs.get(job_id[:ID_LIMIT])
    args = dict(job.args or {})
    # A script's source reads as the program it is, not as one JSON string full of "\n".
    script = args.pop("source", None) if job.action == RUN_ACTION else None
    approval = job.approval
    return {
        "job": job,
        "approval": approval,
        # Approve and Reject are offered only to someone the service would let decide.
        "can_decide": approval is not None
        and approval.state == "pending"
        and job.state == AWAITING_APPROVAL
        and decider_refusal(user, approval, job.id) is None,
        "out": await shown_output(platform, job),
        "script": script if isinstance(script, str) else None,
        "args_text": pretty(args) if args else None,
        "result_text": pretty(job.result) if job.result is not None else None,
        "run_url": f"/scripts/-/runs/{job.batch_id}" if job.action == RUN_ACTION else None,
        "responder": responder(user),
        "final": FINAL_STATES,
        # Checked once the job ended: its stored result against its outcome record.
        "integrity": (
            await platform.bindings.job_problem(job.id) if job.state in FINAL_STATES else None
        ),
    }


def _not_found(request: Request, e: NotFound) -> Response:
    return render(request, "message.html", 404, heading="Job not found", message=str(e))


async def _job_page(
    request: Request,
    platform: Platform,
    user: User,
    job_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    try:
        detail = await _detail(platform, user, job_id)
    except NotFound as e:
        return _not_found(request, e)
    return render(request, "job.html", status, error=error, notice=notice, **detail)


@router.get("/jobs/{job_id}")
async def job_page(job_id: str, request: Request, platform: PlatformDep, user: Reader) -> Response:
    response = await _job_page(request, platform, user, job_id, notice=read_notice(request))
    forget_notice(request, response, path="/jobs")
    return response


@router.get("/jobs/{job_id}/detail")
async def job_detail(
    job_id: str, request: Request, platform: PlatformDep, user: Reader
) -> Response:
    """The job's state, facts and output alone, polled while it has not ended; once it has,
    the fragment comes back without its trigger and the polling stops."""
    try:
        detail = await _detail(platform, user, job_id)
    except NotFound as e:
        return _not_found(request, e)
    return render(request, "job_detail.html", **detail)


def back_to(sent: object, job_id: str) -> str:
    """The page a cancel returns to: the form's `back` when it is one of ours, else the job's."""
    if isinstance(sent, str) and _BACK.fullmatch(sent):
        return sent
    return job_url(job_id)


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: str, request: Request, platform: PlatformDep, user: Responder) -> Response:
    """Cancel through the service (checked and audited there), then back to the page the
    button was on (post/redirect/get); a refusal is the job page with the service's sentence."""
    job_id = job_id[:ID_LIMIT]
    back = back_to((await request.form()).get("back"), job_id)
    try:
        await platform.jobs.cancel(job_id, user, source=source_of(request))
    except NotFound as e:
        return _not_found(request, e)
    except PlatformError as e:
        return await _job_page(request, platform, user, job_id, status=e.status_code, error=str(e))
    return RedirectResponse(back, status_code=303)


@router.post("/jobs/{job_id}/approve")
async def approve(
    job_id: str, request: Request, platform: PlatformDep, user: Responder
) -> Response:
    """Approve the request the job belongs to (its whole batch), with an optional reason; a
    refusal (own request, lower tier, already decided) is the job page with its sentence."""
    return await _decide(job_id, request, platform, user, approving=True)


@router.post("/jobs/{job_id}/reject")
async def reject(job_id: str, request: Request, platform: PlatformDep, user: Responder) -> Response:
    """Reject the request the job belongs to, with the reason the form requires."""
    return await _decide(job_id, request, platform, user, approving=False)


async def _decide(
    job_id: str, request: Request, platform: Platform, user: User, *, approving: bool
) -> Response:
    job_id = job_id[:ID_LIMIT]
    form = await request.form()
    back = back_to(form.get("back"), job_id)
    sent = form.get("reason")
    reason = sent[:1000] if isinstance(sent, str) else ""
    try:
        if approving:
            decided = await platform.approvals.approve(
                job_id, user, reason=reason or None, source=source_of(request)
            )
        else:
            decided = await platform.approvals.reject(
                job_id, user, reason=reason, source=source_of(request)
            )
    except NotFound as e:
        return _not_found(request, e)
    except PlatformError as e:
        return await _job_page(request, platform, user, job_id, status=e.status_code, error=str(e))
    verb = "Approved" if approving else "Rejected"
    sentence = f"{verb} {decided.action} requested by {decided.requested_by}."
    return done(back, sentence, path="/jobs")


@dataclass(frozen=True)
class BatchCancel:
    """What one press of "Cancel the run" did."""

    withdrawn: int
    stopping: int
    # More jobs were left to cancel than one press handles.
    more: bool = False


async def cancel_batch(
    platform: Platform, user: User, batch_id: str, *, source: str
) -> BatchCancel:
    """Cancel the batch's unfinished jobs not yet asked to stop, at most CANCEL_LIMIT of them, one
    service call each (so each is checked and audited like a single cancel): how many were
    withdrawn before delivery, how many agents were asked to stop theirs, and whether more remain
    for another press. A job that ended meanwhile is skipped; any other refusal (the same for
    every job: the user's) stops the loop and is raised."""
    unfinished = await platform.jobs.find(
        batch_id=batch_id,
        # A run still awaiting approval is withdrawn as well.
        states=[AWAITING_APPROVAL, *UNFINISHED],
        cancel_requested=False,
        limit=CANCEL_LIMIT + 1,
    )
    withdrawn = stopping = 0
    for job in unfinished[:CANCEL_LIMIT]:
        try:
            after = await platform.jobs.cancel(job.id, user, source=source)
        except Conflict:
            continue
        if after.state == "cancelled":
            withdrawn += 1
        else:
            stopping += 1
    return BatchCancel(withdrawn, stopping, more=len(unfinished) > CANCEL_LIMIT)


def batch_cancel_sentence(done: BatchCancel) -> str:
    """What a batch cancel did, for the page it returns to."""
    total = done.withdrawn + done.stopping
    if total == 0:
        return (
            "Nothing was cancelled: every job of this run had already ended or been asked to stop."
        )
    sentence = f"Cancelled {total} job(s) of this run."
    if done.stopping == 1:
        sentence += " 1 of them had reached its host, whose agent was asked to stop it."
    elif done.stopping:
        sentence += (
            f" {done.stopping} of them had reached their hosts, whose agents were asked to stop "
            "them."
        )
    if done.more:
        sentence += (
            f" One cancel handles at most {CANCEL_LIMIT} jobs and this run has more that have not "
            "ended: cancel it again for the rest."
        )
    return sentence
