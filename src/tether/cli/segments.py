"""`tether segment create|list|set|rename|delete`."""

from enum import StrEnum
from typing import Annotated
from urllib.parse import quote

import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.errors import UsageError
from tether.cli.output import console, emit_json, plain, table
from tether.cli.times import parse_duration

segment_app = typer.Typer(
    help="Device segments and their Active Response switch.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


def segment_path(name: str) -> str:
    # Names may hold spaces and dots; nothing in them may be read as path structure.
    return f"/segments/{quote(name, safe='')}"


def _on_off(enabled: object) -> str:
    return "on" if enabled else "off"


class ApprovalSetting(StrEnum):
    RESPOND = "respond"
    SCRIPT = "script"
    OFF = "off"


def _approval(segment: dict[str, object]) -> str:
    setting = segment.get("approval", "off")
    if setting == "off":
        return "approval off"
    covered = "respond and script actions" if setting == "respond" else "script actions"
    hours = int(str(segment.get("approval_timeout_seconds", 86400))) / 3600
    return f"{covered} need a second person's approval (within {hours:g} h)"


def _revoked(segment: dict[str, object]) -> str:
    revoked = segment.get("revoked_hosts") or 0
    return f" and {revoked} revoked" if revoked else ""


def _describe(segment: dict[str, object]) -> str:
    switch = _on_off(segment["active_response"])
    return (
        f"Segment {plain(segment['name'])}: Active Response {switch}, {_approval(segment)}, "
        f"{segment['hosts']} host(s){_revoked(segment)}."
    )


@segment_app.command("create")
def create(
    name: str,
    active_response: Annotated[
        Switch, typer.Option("--active-response", help="Start with Active Response on or off.")
    ] = Switch.OFF,
    json_output: JsonOpt = False,
    code: StepUpOpt = None,
) -> None:
    """Create a segment (Active Response off unless asked)."""
    created = Api.from_profile(step_up_code=code).post(
        "/segments", json={"name": name, "active_response": active_response is Switch.ON}
    )
    if json_output:
        emit_json(created)
    else:
        console.print(f"Created. {_describe(created)}", markup=False)


@segment_app.command("list")
def list_segments(json_output: JsonOpt = False) -> None:
    """List segments with their Active Response switch and host count."""
    segments = Api.from_profile().get("/segments")
    if json_output:
        emit_json(segments)
    else:
        rows = [{**s, "active_response": _on_off(s["active_response"])} for s in segments]
        table(
            rows,
            [
                ("name", "Segment"),
                ("active_response", "Active Response"),
                ("approval", "Approval"),
                ("hosts", "Hosts"),
                ("revoked_hosts", "Revoked"),
                ("created_at", "Created"),
            ],
        )


@segment_app.command("set")
def set_switch(
    name: str,
    active_response: Annotated[
        Switch | None,
        typer.Option("--active-response", help="Switch Active Response on or off."),
    ] = None,
    approval: Annotated[
        ApprovalSetting | None,
        typer.Option(
            "--approval",
            help="Four eyes: respond (respond and script actions wait for a second person's "
            "approval), script (only script actions), or off.",
        ),
    ] = None,
    approval_timeout: Annotated[
        str | None,
        typer.Option(
            "--approval-timeout", help="How long a request waits for approval: 30m, 4h, 1d."
        ),
    ] = None,
    json_output: JsonOpt = False,
    code: StepUpOpt = None,
) -> None:
    """Switch Active Response on or off, or set four-eyes approval, for every host of the
    segment (switching it on, or asking fewer actions to wait, needs a fresh authenticator
    code when the last one is over 5 minutes old)."""
    body: dict[str, object] = {}
    if active_response is not None:
        body["active_response"] = active_response is Switch.ON
    if approval is not None:
        body["approval"] = approval.value
    if approval_timeout is not None:
        body["approval_timeout_seconds"] = parse_duration(approval_timeout)
    if not body:
        raise UsageError("Give --active-response, --approval or --approval-timeout.")
    changed = Api.from_profile(step_up_code=code).patch(segment_path(name), json=body)
    if json_output:
        emit_json(changed)
    else:
        console.print(_describe(changed), markup=False)


@segment_app.command("rename")
def rename(old: str, new: str, json_output: JsonOpt = False) -> None:
    """Give a segment a new name; its hosts stay in it."""
    changed = Api.from_profile().patch(segment_path(old), json={"name": new})
    if json_output:
        emit_json(changed)
    else:
        console.print(f"Renamed. {_describe(changed)}", markup=False)


@segment_app.command("delete")
def delete(name: str) -> None:
    """Delete an empty segment (and its enrollment tokens)."""
    Api.from_profile().delete(segment_path(name))
    console.print(f"Deleted segment {plain(name)}.", markup=False)
