"""`tether jobs`, `tether job show|cancel`, `tether actions`."""

import json
import re
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError, UsageError
from tether.cli.follow import follow_jobs, job_path
from tether.cli.output import console, emit_json, one_line, plain, table, terminal_text
from tether.cli.times import short_time
from tether.protocol import FINAL_STATES
from tether.protocol.hostnames import shared_hostnames

job_app = typer.Typer(help="One job: show it with its output, cancel it.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

SHORT_ID = 12
# As much of a host id as `tether hosts` shows; any unique prefix of 4 or more names the host.
SHORT_HOST_ID = 8
# Job ids are 32 hex digits; a shorter hex prefix is looked up among the latest jobs.
_FULL_ID = re.compile(r"^[0-9a-f]{32}$")
_PREFIX = re.compile(r"^[0-9a-f]{4,31}$")
_PREFIX_SCAN = 1000
_OUTPUT_PAGE_LIMIT = 1000


class State(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    DELIVERED = "delivered"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


JOB_COLUMNS = [
    ("id", "ID"),
    ("hostname", "Host"),
    ("action", "Action"),
    ("state", "State"),
    ("created_by", "Created by"),
    ("created_at", "Created"),
    ("finished_at", "Finished"),
    ("error", "Error"),
]


def _row(job: dict[str, Any], shared: frozenset[str] = frozenset()) -> dict[str, Any]:
    hostname = job["hostname"]
    return {
        **job,
        "id": job["id"][:SHORT_ID],
        # Two hosts of the list with one name (a re-imaged machine): the id tells them apart.
        "hostname": (
            f"{hostname} ({job['host_id'][:SHORT_HOST_ID]})" if hostname in shared else hostname
        ),
        "created_at": short_time(job.get("created_at")),
        "finished_at": short_time(job.get("finished_at")),
        "error": one_line(job["error"], 60) if job.get("error") else None,
    }


def resolve_job_id(api: Api, ref: str) -> str:
    """The full id of a job given in full or by a prefix as the `tether jobs` table shows it."""
    ref = ref.strip().lower()
    if _FULL_ID.match(ref) or not _PREFIX.match(ref):
        return ref
    recent = api.get("/jobs", params={"limit": _PREFIX_SCAN})
    found = [j["id"] for j in recent if j["id"].startswith(ref)]
    if not found:
        raise CliError(
            f"No job among the latest {_PREFIX_SCAN} has an id starting with {ref}; "
            "give the full id ('tether jobs --json' shows it)."
        )
    if len(found) > 1:
        raise CliError(f"{len(found)} jobs have an id starting with {ref}; give more of it.")
    return str(found[0])


def list_jobs(
    pending: Annotated[bool, typer.Option("--pending", help="Only jobs still queued.")] = False,
    state: Annotated[
        list[State] | None, typer.Option("--state", help="Only jobs in this state (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Only jobs of this host.")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only jobs of this batch.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most N.")] = 100,
    json_output: JsonOpt = False,
) -> None:
    """List jobs, newest first: id, host, action, state, who created it, when, error."""
    states = [s.value for s in state or []]
    if pending and State.QUEUED.value not in states:
        states.append(State.QUEUED.value)
    params: dict[str, Any] = {"limit": limit}
    if states:
        params["state"] = states
    if host is not None:
        params["host"] = host
    if batch is not None:
        params["batch"] = batch
    jobs = Api.from_profile().get("/jobs", params=params)
    if json_output:
        emit_json(jobs)
    elif not jobs:
        console.print(
            "No job is pending: nothing waits for an offline host."
            if pending
            else "No job matches.",
            markup=False,
        )
    else:
        shared = shared_hostnames((j["hostname"], j["host_id"]) for j in jobs)
        table([_row(j, shared) for j in jobs], JOB_COLUMNS, truncate={"error"})


def read_output(api: Api, job_id: str) -> list[dict[str, Any]]:
    """Every stored piece of a job's output, in order."""
    pieces: list[dict[str, Any]] = []
    cursor = 0
    while True:
        answer = api.get(f"{job_path(job_id)}/output", params={"after": cursor})
        pieces += answer["output"]
        if len(answer["output"]) < _OUTPUT_PAGE_LIMIT or answer["cursor"] == cursor:
            return pieces
        cursor = answer["cursor"]


def print_rows(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Result rows as one table whose columns are every key seen, in order of appearance."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    if title:
        console.print(title, markup=False)
    table(rows, [(k, plain(k)) for k in keys])


def pretty(value: Any) -> str:
    """JSON from an endpoint, indented and safe for a terminal."""
    return terminal_text(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def _print_text(pieces: list[dict[str, Any]]) -> None:
    for piece in pieces:
        text = terminal_text(piece.get("text") or "")
        if piece["stream"] == "stdout":
            console.out(text, end="", highlight=False)
        else:
            # Everything but stdout is labelled line by line, so it stands out from the data.
            for line in text.splitlines():
                console.out(f"{piece['stream']}: {line}", highlight=False)
    if pieces and not (pieces[-1].get("text") or "").endswith("\n"):
        console.out("", highlight=False)


@job_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    json_output: JsonOpt = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Stream the output of a job not yet ended until it ends."
        ),
    ] = False,
) -> None:
    """Show one job: every field, its result, then its stored output (or, with --follow, its
    output as it comes until the job ends)."""
    if follow and json_output:
        raise UsageError(
            "--follow streams for people; use 'tether job show ID --json' when it ended."
        )
    api = Api.from_profile()
    job_id = resolve_job_id(api, job_id)
    job = api.get(job_path(job_id))
    if follow and job["state"] not in FINAL_STATES:
        _print_fields(job)
        _follow(api, job)
        return
    pieces = read_output(api, job_id)
    if json_output:
        emit_json({"job": job, "output": pieces})
        if job.get("integrity"):
            raise typer.Exit(1)
        return
    if job.get("integrity"):
        # Said first and last: what follows is what is stored, no longer what was recorded.
        console.print(
            f"WARNING: {one_line(job['integrity'], 1000)} What follows is not evidence.",
            markup=False,
            style="bold red",
        )
    _print_fields(job)
    text = [p for p in pieces if p["stream"] != "row"]
    rows = [p.get("fields") or {} for p in pieces if p["stream"] == "row"]
    if text:
        console.print("output:", markup=False)
        _print_text(text)
    print_rows(rows, "rows:")
    if not pieces:
        console.print("output: none stored", markup=False)
    if job.get("integrity"):
        console.print(
            f"WARNING: {one_line(job['integrity'], 1000)}", markup=False, style="bold red"
        )
        raise typer.Exit(1)


@job_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID")], json_output: JsonOpt = False
) -> None:
    """Cancel a pending job at once, or ask the agent to stop a delivered or running one."""
    api = Api.from_profile()
    job = api.post(f"{job_path(resolve_job_id(api, job_id))}/cancel")
    if json_output:
        emit_json(job)
    elif job["state"] in FINAL_STATES:
        console.print(f"Job {job['id']} is {job['state']}.", markup=False)
    else:
        console.print(
            f"Job {job['id']} is {job['state']}; its agent was asked to stop it.", markup=False
        )


def describe_approval(approval: dict[str, Any]) -> str:
    """Who asked for the job, who decided and why, in one line."""
    asked = (
        f"requested by {plain(approval['requested_by'])} at "
        f"{short_time(approval['requested_at'])} ({approval['tier']} tier)"
    )
    state = approval["state"]
    if state == "pending":
        return f"{asked}; awaiting approval until {short_time(approval['deadline'])}"
    why = f": {one_line(approval['reason'], 300)}" if approval.get("reason") else ""
    if state == "expired":
        return f"{asked}; expired{why}"
    return f"{asked}; {state} by {plain(approval['decided_by'])}{why}"


ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Why (kept in the audit log and on the job).")
]


@job_app.command("approve")
def approve(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: ReasonOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Approve a job awaiting a second person's approval (with its whole batch); it is then
    sent to its hosts. You cannot approve your own request."""
    api = Api.from_profile()
    body = {"reason": reason} if reason else {}
    decided = api.post(f"{job_path(resolve_job_id(api, job_id))}/approve", json=body)
    if json_output:
        emit_json(decided)
    else:
        console.print(
            f"Approved: {decided['action']} requested by {plain(decided['requested_by'])} is "
            "queued for its hosts.",
            markup=False,
        )


@job_app.command("reject")
def reject(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required; the requester sees it).")],
    json_output: JsonOpt = False,
) -> None:
    """Reject a job awaiting a second person's approval (with its whole batch)."""
    api = Api.from_profile()
    decided = api.post(f"{job_path(resolve_job_id(api, job_id))}/reject", json={"reason": reason})
    if json_output:
        emit_json(decided)
    else:
        console.print(
            f"Rejected: {decided['action']} requested by {plain(decided['requested_by'])}.",
            markup=False,
        )


def list_actions(json_output: JsonOpt = False) -> None:
    """List the actions agents can run, with the permission and Active Response tier each needs."""
    actions = Api.from_profile().get("/actions")
    if json_output:
        emit_json(actions)
    else:
        table(
            actions,
            [
                ("name", "Action"),
                ("response", "Response action"),
                ("permission", "Permission"),
                ("tier", "Tier"),
                ("timeout_seconds", "Time limit (s)"),
                ("description", "Description"),
            ],
        )


def _print_fields(job: dict[str, Any]) -> None:
    for key, value in job.items():
        if key in ("result", "args", "integrity", "approval") or (key == "waiting" and not value):
            continue
        shown = one_line(value, 1000) if key == "error" and value else plain(value)
        console.print(f"{key:20} {shown}", markup=False, highlight=False)
    if job.get("approval"):
        console.print(f"{'approval':20} {describe_approval(job['approval'])}", markup=False)
    for key in ("args", "result"):
        if job.get(key) is not None:
            console.print(f"{key}:", markup=False)
            console.out(pretty(job[key]), highlight=False)


def _follow(api: Api, job: dict[str, Any]) -> None:
    """Stream a job's output from its start until it ends, then its rows and how it ended;
    exits 1 unless it succeeded."""
    # Imported here: `tether run` prints rows with this module's print_rows.
    from tether.cli.run import StreamPrinter, succeeded, summary_line

    console.print("output (following; Ctrl-C stops following, the job goes on):", markup=False)
    printer = StreamPrinter(prefixed=False)
    try:
        ended = follow_jobs(api, [job["id"]], printer.piece, printer.end)[job["id"]]
    except KeyboardInterrupt:
        sys.stderr.write(f"Stopped following; job {job['id']} goes on.\n")
        raise typer.Exit(130) from None
    for rows in printer.rows.values():
        print_rows(rows, "rows:")
    sys.stderr.write(summary_line(ended) + "\n")
    if not succeeded(ended):
        raise typer.Exit(1)
