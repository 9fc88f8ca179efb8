"""`tether audit list|verify|export` and `tether audit checkpoint export`."""

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError, UsageError
from tether.cli.output import console, emit_json, json_text, table
from tether.cli.times import parse_duration, parse_instant
from tether.cli.witness import (
    Remembered,
    day_of,
    genuine,
    memory_file,
    read_witness_file,
    recall,
    remember,
    same_key,
    walk_rotations,
)
from tether.protocol.checkpoint import CheckpointDocument, SignedCheckpoint

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
def verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Check the log against this checkpoint (exported earlier, or the newest a "
            "SIEM received) instead of the one this config folder remembers.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the whole chain and the signed checkpoint, and that the log still extends the last
    checkpoint verified from this config folder (or --checkpoint FILE); exit 1 when anything is
    wrong."""
    api = Api.from_profile()
    memory = memory_file(api.server, api.ca_pem)
    remembered = recall(memory) if checkpoint is None else None
    if checkpoint is not None:
        kept: SignedCheckpoint | None = read_witness_file(checkpoint)
    else:
        kept = remembered.checkpoint if remembered is not None else None
    body = {"checkpoint": _wire(kept) if kept is not None else None}
    report = api.post("/audit/verify", json=body)
    problem = report["problem"] if not report["intact"] else ""
    signed = CheckpointDocument.model_validate(report["signed"]) if report["signed"] else None
    if not problem and signed is not None and not genuine(signed):
        problem = "The platform's checkpoint does not match its own audit key."
    rotations = list(report.get("key_rotations") or [])
    if not problem and kept is not None:
        problem = _witness_problem(
            checkpoint, remembered, kept, signed, report["witness"], rotations
        )
    if json_output:
        emit_json({**report, "witness_problem": problem})
    elif problem:
        console.print(f"BROKEN: {problem}", markup=False, style="bold red")
    else:
        console.print(
            f"Intact: {report['records']} records, head {report['head_seq']} "
            f"({report['head_hash'][:16]}...), signed checkpoint at {report['checkpoint_seq']}.",
            markup=False,
        )
    notes = list(report.get("notes") or [])
    witness_note = str((report.get("witness") or {}).get("note") or "")
    if not json_output and not problem:
        known = remembered.checkpoint.public_key if remembered is not None else ""
        if known and signed is not None and not same_key(known, signed.public_key):
            console.print(
                "The platform's audit key was rotated since your last verify; the rotation is "
                "signed by the key you verified and by the new one.",
                markup=False,
            )
        for note in notes:
            console.print(note, markup=False)
        if witness_note:
            console.print(
                f"The checkpoint kept at record {kept.seq if kept else '?'} was "
                f"taken back by a restore: {witness_note}",
                markup=False,
            )
    if problem:
        raise typer.Exit(1)
    if checkpoint is not None and kept is not None:
        if not json_output:
            console.print(
                f"The log extends the checkpoint in {checkpoint} at record {kept.seq}.",
                markup=False,
            )
        return
    if signed is None or (kept is not None and signed.seq < kept.seq and not witness_note):
        # Never move the memory back to an older checkpoint (unless a recorded restore took
        # that one back: then the restored log is the one to witness from here on).
        return
    remember(memory, api.server, signed, datetime.now(UTC))
    if json_output:
        return
    if remembered is None:
        console.print(
            f"First verification of {api.server} from this config folder: its checkpoint at "
            f"record {signed.seq} is now remembered in {memory}, and every later verify checks "
            "that the log still extends it.",
            markup=False,
        )
    else:
        console.print(
            f"The log extends the checkpoint you verified on "
            f"{day_of(remembered.verified_at)} at record {remembered.checkpoint.seq}; "
            f"record {signed.seq} is remembered now.",
            markup=False,
        )


def _wire(kept: SignedCheckpoint) -> dict[str, object]:
    """The checkpoint as POST /audit/verify takes it (without the public key)."""
    return SignedCheckpoint.model_validate(kept.model_dump()).model_dump()


def _witness_problem(
    source: Path | None,
    remembered: Remembered | None,
    kept: SignedCheckpoint,
    signed: CheckpointDocument | None,
    witness: dict[str, Any] | None,
    rotations: list[dict[str, Any]],
) -> str:
    """One sentence when the log does not extend the kept checkpoint, else ""."""
    platform_key = signed.public_key if signed is not None else ""
    if source is not None:
        foreign = (
            isinstance(kept, CheckpointDocument)
            and not same_key(kept.public_key, platform_key)
            and walk_rotations(kept.public_key, rotations, platform_key) is None
        )
        if foreign or (witness is not None and not witness["genuine"]):
            raise CliError(
                f"{source} was signed by another audit key than this platform's, so it cannot "
                "witness this log."
            )
        label = f"the checkpoint in {source} (signed on {day_of(kept.signed_at)})"
    elif remembered is None:
        return ""
    elif not same_key(remembered.checkpoint.public_key, platform_key) and (
        walk_rotations(remembered.checkpoint.public_key, rotations, platform_key) is None
    ):
        return (
            "The platform's audit key is not the one that signed the checkpoint you verified "
            f"on {day_of(remembered.verified_at)}, so its whole log may have been signed anew; "
            f"if an operator replaced the key on purpose, delete {remembered.path}."
        )
    else:
        label = f"the checkpoint you verified on {day_of(remembered.verified_at)}"
    if witness is None or witness["extends"]:
        return ""
    return f"The audit log does not extend {label} at record {kept.seq}: {witness['reason']}"


checkpoint_app = typer.Typer(help="Signed checkpoints of the audit log.", no_args_is_help=True)
audit_app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("export")
def export_checkpoint() -> None:
    """Write the platform's newest signed checkpoint and its audit public key as JSON to
    stdout; keep it off the platform's host and check against it later with
    'tether audit verify --checkpoint FILE'."""
    api = Api.from_profile()
    document = CheckpointDocument.model_validate(api.get("/audit/checkpoint"))
    if not genuine(document):
        raise CliError(
            "The platform's checkpoint does not match its own audit key; run 'tether audit verify'."
        )
    emit_json({**document.model_dump(), "platform": api.server})


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
