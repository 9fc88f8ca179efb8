"""`tether audit list|verify|export`."""

import sys
from typing import Annotated

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json, table

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


@audit_app.command("export")
def export(
    jsonl: Annotated[bool, typer.Option("--jsonl", help="JSON lines (the only format).")] = True,
) -> None:
    """Write every record as JSON lines to stdout, for a SIEM or an offline copy."""
    if not jsonl:
        raise CliError("Only --jsonl export exists.")
    for line in Api.from_profile().stream_lines("/audit/export"):
        if line:
            sys.stdout.write(line + "\n")
