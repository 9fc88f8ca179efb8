"""`tether audit list|verify|export`."""

import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError, UsageError
from tether.cli.output import console, emit_json, json_text, table
from tether.cli.times import parse_duration, parse_instant

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@audit_app.command("list")
def list_records(
    after: Annotated[int, typer.Option(help="Start after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many records (1-1000).")] = 100,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show audit records in chain order."""
    records = Api.from_profile().get("/audit", params={"after": after, "limit": limit})
    if json_output:
        emit_json(records)
    else:
        table(
            records,
            [
                ("seq", "#"),
                ("ts", "Time"),
                ("actor", "Actor"),
                ("action", "Action"),
                ("target", "Target"),
                ("outcome", "Outcome"),
                ("source", "Source"),
            ],
        )


@audit_app.command("verify")
def verify(json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check the whole chain and the signed checkpoint; exit 1 when anything is wrong."""
    report = Api.from_profile().get("/audit/verify")
    if json_output:
        emit_json(report)
    elif report["intact"]:
        console.print(
            f"Intact: {report['records']} records, head {report['head_seq']} "
            f"({report['head_hash'][:16]}...), signed checkpoint at {report['checkpoint_seq']}.",
            markup=False,
        )
    else:
        console.print(f"BROKEN: {report['problem']}", markup=False, style="bold red")
    if not report["intact"]:
        raise typer.Exit(1)


def _moment(text: str) -> str:
    """A `--since`/`--until` value for the API: a duration back from now (24h, 7d) or an ISO
    time with its zone."""
    if not text:
        return ""
    try:
        ago = parse_duration(text)
    except UsageError:
        try:
            return parse_instant(text).isoformat()
        except UsageError:
            raise UsageError(
                f"{text!r} is neither a time with a zone like 2026-12-01T08:00Z nor a duration "
                "like 24h or 7d."
            ) from None
    return (datetime.now(UTC) - timedelta(seconds=ago)).isoformat()


@audit_app.command("export")
def export(
    jsonl: Annotated[bool, typer.Option("--jsonl", help="JSON lines (the only format).")] = True,
    user: Annotated[str, typer.Option(help="Only records by this user (part of the name).")] = "",
    host: Annotated[str, typer.Option(help="Only records about this host (name or id).")] = "",
    kind: Annotated[str, typer.Option(help="Only this kind of action: job, file, auth, ...")] = "",
    action: Annotated[str, typer.Option(help="Only actions starting with this.")] = "",
    since: Annotated[
        str, typer.Option(help="From this time (2026-12-01T08:00Z) or this long ago (24h, 7d).")
    ] = "",
    until: Annotated[str, typer.Option(help="Up to this time (2026-12-01T18:00Z).")] = "",
) -> None:
    """Write the records (all, or those the filters match) as JSON lines to stdout, oldest
    first, for a SIEM or an offline copy; the same filters as Session History in the web UI."""
    if not jsonl:
        raise CliError("Only --jsonl export exists.")
    params = {
        "actor": user,
        "target": host,
        "kind": kind,
        "action": action,
        "since": _moment(since),
        "until": parse_instant(until).isoformat() if until else "",
    }
    wanted = {k: v for k, v in params.items() if v}
    for line in Api.from_profile().stream_lines("/audit/export", params=wanted):
        if line:
            sys.stdout.write(json_text(line) + "\n")
