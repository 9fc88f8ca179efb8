"""Run a library script on a selection, then follow the run: output and rows per host, CSV.

The submission is the API's POST /jobs with `script`: `ScriptLibrary.run_args` resolves the
source and checks the parameters, `Jobs.submit` checks the user (Active Response role, second
factor) and each host's segment, audits and queues. The page only builds the request and shows
the service's sentence when it says no. Both pages need results.read, like reading a batch.
"""

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from tether.protocol.hostnames import shared_hostnames
from tether.server.api.deps import PlatformDep, source_of
from tether.server.api.job_schemas import HostSelection
from tether.server.api.jobs import selection_of
from tether.server.errors import Invalid, NotFound, PlatformError
from tether.server.services.jobs import BatchView, JobView
from tether.server.services.platform import Platform
from tether.server.services.scripts import RUN_ACTION, ScriptVersion
from tether.server.services.users import User
from tether.server.web.job_output import ShownOutput, shown_output
from tether.server.web.jobs import Responder, batch_cancel_sentence, cancel_batch, responder
from tether.server.web.notice import done, forget_notice, read_notice
from tether.server.web.numbers import whole_number
from tether.server.web.row_export import rows_csv
from tether.server.web.run_summary import RunSummary, changed_lines, run_summary
from tether.server.web.script_form import fields_of, params_of
from tether.server.web.scripts import Reader, script_url
from tether.server.web.templating import render

router = APIRouter()
PICK_SCRIPT = "Choose a script to run."
PICK_TARGET = "Choose the selected hosts, a segment, or all hosts."
NOT_A_VERSION = "A script version is a whole number greater than 0."
# The notice naming the hosts left out starts with this; its other lines are the reasons.
REFUSED_HEADING = "Not run on"
# What the refusal notice may hold: read_notice keeps 1024 characters, and a browser keeps a
# cookie of at most 4096 bytes (the notice travels percent-encoded).
NOTICE_ROOM = 1000
COOKIE_ROOM = 3000
TARGETS = ("hosts", "segment", "all")
# Runs on at most this many hosts show every host's output inline, polled whole; larger ones
# show a summary that polls only what changed (docs/adr/0021).
INLINE_HOSTS = 10


async def _pairs(request: Request) -> list[tuple[str, str]]:
    if request.method == "POST":
        form = await request.form()
        return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    return list(request.query_params.multi_items())


def _refs(pairs: list[tuple[str, str]]) -> list[str]:
    """Host refs: ticked ids plus the ids or hostnames typed, spaces or commas between them."""
    ticked = [v for k, v in pairs if k == "host" and v]
    typed = " ".join(v for k, v in pairs if k == "more_hosts").replace(",", " ").split()
    return list(dict.fromkeys([*ticked, *typed]))


async def _form_page(
    request: Request,
    platform: Platform,
    pairs: list[tuple[str, str]],
    *,
    status: int = 200,
    error: str | None = None,
) -> Response:
    values = dict(pairs)
    name = values.get("script", "")[:200]
    scripts = await platform.scripts.list()
    script: ScriptVersion | None = None
    if name:
        try:
            script = await platform.scripts.get(name)
        except NotFound as e:
            error, status = str(e), 404
    ticked = [v for k, v in pairs if k == "host" and v]
    known = {h.id: h for h in await platform.hosts.list()}
    return render(
        request,
        "script_run.html",
        status,
        scripts=scripts,
        script=script,
        fields=fields_of(script.parameters, values) if script else [],
        ticked=sorted(
            ((ref, known[ref].hostname if ref in known else ref) for ref in ticked),
            key=lambda pair: pair[1],
        ),
        more_hosts=values.get("more_hosts", "")[:10_000],
        target=values.get("target", "hosts"),
        segment=values.get("segment", ""),
        segments=[s.name for s in await platform.segments.list()],
        error=error,
        script_url=script_url,
    )


@router.get("/scripts/-/run")
async def run_form(request: Request, platform: PlatformDep, _user: Reader) -> Response:
    """The Run form; `script` picks the script, `host` (repeated) preselects hosts."""
    return await _form_page(request, platform, await _pairs(request))


async def _submit(
    request: Request, platform: Platform, user: User, pairs: list[tuple[str, str]]
) -> BatchView:
    values = dict(pairs)
    name = values.get("script", "")
    if not name:
        raise Invalid(PICK_SCRIPT)
    version_text = values.get("version", "")
    version = whole_number(version_text) if version_text else None
    if version_text and not version:
        raise Invalid(NOT_A_VERSION)
    script = await platform.scripts.get(name, version)
    args = await platform.scripts.run_args(
        user,
        RUN_ACTION,
        script.name,
        script.version,
        {"params": params_of(script.parameters, pairs)},
    )
    target = values.get("target", "hosts")
    try:
        # The API's request model and its conversion: exactly one of hosts, segment, all.
        chosen = HostSelection(
            hosts=_refs(pairs) if target == "hosts" else None,
            segment=(values.get("segment") or None) if target == "segment" else None,
            all=target == "all",
        )
    except ValidationError as e:
        raise Invalid(PICK_TARGET) from e
    return await platform.jobs.submit(
        user,
        RUN_ACTION,
        args,
        await selection_of(platform, chosen),
        from_library=True,
        source=source_of(request),
    )


@router.post("/scripts/-/run")
async def run(request: Request, platform: PlatformDep, user: Reader) -> Response:
    """Queue the script for the selection; the results page follows it (post/redirect/get, so
    a reload never runs it twice)."""
    pairs = await _pairs(request)
    try:
        batch = await _submit(request, platform, user, pairs)
    except PlatformError as e:
        return await _form_page(request, platform, pairs, status=e.status_code, error=str(e))
    url = run_url(batch.id)
    # Jobs awaiting a second person's approval say so, first (docs/adr/0039).
    notes = [batch.notice] if batch.notice else []
    if batch.refused:
        notes.append(_refusal_notice(list(batch.refused.values())))
    if not notes:
        return RedirectResponse(url, status_code=303)
    return done(url, "\n".join(notes), path=url)


def run_url(batch_id: str) -> str:
    return f"/scripts/-/runs/{batch_id}"


def _refusal_notice(reasons: list[str]) -> str:
    """The service's reason for each host it left out, one a line after a heading line, as many
    as the notice cookie holds (then how many more)."""
    lines = [f"{REFUSED_HEADING} {len(reasons)} host(s):"]
    for shown, reason in enumerate(reasons):
        text = "\n".join([*lines, reason])
        if len(text) > NOTICE_ROOM or len(quote(text)) > COOKIE_ROOM:
            lines.append(f"And {len(reasons) - shown} more host(s).")
            break
        lines.append(reason)
    return "\n".join(lines)


async def _script_run(platform: Platform, batch_id: str) -> BatchView:
    batch = await platform.jobs.batch(batch_id[:64])
    if batch.action != RUN_ACTION:
        raise NotFound(f"No script run has the id {batch_id!r}.")
    return batch


async def _run_view(
    platform: Platform, batch_id: str, *, as_summary: bool = False
) -> tuple[BatchView, list[ShownOutput], RunSummary | None]:
    """A run on a few hosts shows every host's output inline; a larger one its summary only
    (no output read), each host's output a link away on its job page."""
    batch = await _script_run(platform, batch_id)
    if as_summary or len(batch.jobs) > INLINE_HOSTS:
        return batch, [], await run_summary(platform, batch)
    hosts = [await shown_output(platform, job) for job in sorted(batch.jobs, key=_by_host)]
    return batch, hosts, None


def _running(hosts: list[ShownOutput], summary: RunSummary | None) -> bool:
    if summary is not None:
        return summary.running
    return not all(h.done for h in hosts)


def _by_host(job: JobView) -> tuple[str, str]:
    return job.hostname, job.host_id


async def _script_of(platform: Platform, batch: BatchView) -> str:
    """The library name and version the run's arguments carry ("Name vN")."""
    if not batch.jobs:
        return "a script"
    args = (await platform.jobs.get(batch.jobs[0].id)).args or {}
    return str(args.get("name") or "an ad hoc script")


async def _results_page(
    request: Request,
    platform: Platform,
    user: User,
    batch_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    as_summary: bool = False,
) -> Response:
    try:
        batch, hosts, summary = await _run_view(platform, batch_id, as_summary=as_summary)
    except NotFound as e:
        return render(request, "message.html", 404, heading="Run not found", message=str(e))
    # The confirmation the submit or the cancel left in the notice cookie (never in the link,
    # which anyone can craft): the hosts left out, or what the cancel did.
    cancelled, refused = None, []
    notice = read_notice(request)
    if notice is not None and notice.startswith(REFUSED_HEADING):
        refused = notice.split("\n")
    else:
        cancelled = notice
    response = render(
        request,
        "script_results.html",
        status,
        batch=batch,
        hosts=hosts,
        summary=summary,
        inline_hosts=INLINE_HOSTS,
        script_name=await _script_of(platform, batch),
        refused=refused,
        running=_running(hosts, summary),
        responder=responder(user),
        cancelled=cancelled,
        error=error,
    )
    forget_notice(request, response, path=run_url(batch.id))
    return response


@router.get("/scripts/-/runs/{batch_id}")
async def results(
    batch_id: str, request: Request, platform: PlatformDep, user: Reader, view: str = ""
) -> Response:
    """The run's results; `view=summary` shows a few-host run as the summary too."""
    return await _results_page(request, platform, user, batch_id, as_summary=view == "summary")


@router.post("/scripts/-/runs/{batch_id}/cancel")
async def cancel_run(
    batch_id: str, request: Request, platform: PlatformDep, user: Responder
) -> Response:
    """Cancel every job of the run that has not ended, then back to the results with how many
    (post/redirect/get); a refusal is the results page with the service's sentence."""
    try:
        batch = await _script_run(platform, batch_id)
        outcome = await cancel_batch(platform, user, batch.id, source=source_of(request))
    except NotFound as e:
        return render(request, "message.html", 404, heading="Run not found", message=str(e))
    except PlatformError as e:
        return await _results_page(
            request, platform, user, batch_id, status=e.status_code, error=str(e)
        )
    url = run_url(batch.id)
    return done(url, batch_cancel_sentence(outcome), path=url)


@router.get("/scripts/-/runs/{batch_id}/hosts")
async def results_fragment(
    batch_id: str, request: Request, platform: PlatformDep, user: Reader
) -> Response:
    """The host sections of a few-host run, polled every second while a job runs; once all
    have ended the fragment comes back without its trigger and the polling stops. For a larger
    run, its summary."""
    try:
        batch, hosts, summary = await _run_view(platform, batch_id)
    except NotFound as e:
        return render(request, "message.html", 404, heading="Run not found", message=str(e))
    return render(
        request,
        "run_summary.html" if summary else "run_hosts.html",
        batch=batch,
        hosts=hosts,
        summary=summary,
        running=_running(hosts, summary),
        responder=responder(user),
    )


@router.get("/scripts/-/runs/{batch_id}/summary")
async def summary_poll(
    batch_id: str, request: Request, platform: PlatformDep, user: Reader, seen: str = ""
) -> Response:
    """The summary's poll: 204 when nothing changed since the token `seen`, else the poller
    with its new token and only the host lines that changed, all out of band."""
    try:
        batch = await _script_run(platform, batch_id)
    except NotFound as e:
        return render(request, "message.html", 404, heading="Run not found", message=str(e))
    summary = await run_summary(platform, batch)
    if seen == summary.token:
        return Response(status_code=204)
    return render(
        request,
        "run_summary_changes.html",
        batch=batch,
        summary=summary,
        changed=changed_lines(summary, seen[:64]),
        responder=responder(user),
    )


async def _all_rows(platform: Platform, batch: BatchView) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    # As `tether run --csv` names them: a name two hosts of the run share carries the host's id.
    shared = shared_hostnames((job.hostname, job.host_id) for job in batch.jobs)
    for job in sorted(batch.jobs, key=_by_host):
        host = f"{job.hostname} ({job.host_id})" if job.hostname in shared else job.hostname
        after = 0
        while pieces := await platform.jobs.output(job.id, after=after):
            rows += [(host, p.fields or {}) for p in pieces if p.stream == "row"]
            after = pieces[-1].id
    return rows


@router.get("/scripts/-/runs/{batch_id}/rows.csv")
async def rows_export(
    batch_id: str, request: Request, platform: PlatformDep, _user: Reader
) -> Response:
    """Every row of every host, a host column first, formula cells made inert."""
    try:
        batch = await _script_run(platform, batch_id)
    except NotFound as e:
        return render(request, "message.html", 404, heading="Run not found", message=str(e))
    return Response(
        rows_csv(await _all_rows(platform, batch)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{batch.id}.csv"'},
    )
