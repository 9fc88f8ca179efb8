"""`tether settings show|set`: the platform-wide access switches (admins only)."""

from typing import Annotated

import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json

settings_app = typer.Typer(help="Platform-wide access settings.", no_args_is_help=True)
NAMES = ("mfa-required-for-everyone", "external-access-suspended")


def _print(settings: dict[str, bool]) -> None:
    for key, value in settings.items():
        console.print(f"{key.replace('_', '-'):28} {'on' if value else 'off'}", markup=False)


@settings_app.command("show")
def show(json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the settings."""
    current = Api.from_profile().get("/settings")
    if json_output:
        emit_json(current)
    else:
        _print(current)


@settings_app.command("set")
def set_setting(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(NAMES)}.")],
    value: Annotated[str, typer.Argument(help="on or off.")],
    json_output: Annotated[bool, typer.Option("--json")] = False,
    code: StepUpOpt = None,
) -> None:
    """Turn a setting on or off."""
    key = name.replace("_", "-")
    if key not in NAMES:
        raise CliError(f"{name!r} is not a setting; the settings are {', '.join(NAMES)}.")
    if value not in {"on", "off"}:
        raise CliError(f"A setting is on or off, not {value!r}.")
    updated = Api.from_profile(step_up_code=code).patch(
        "/settings", json={key.replace("-", "_"): value == "on"}
    )
    if json_output:
        emit_json(updated)
    else:
        _print(updated)


@settings_app.command("agent-addresses")
def agent_addresses(
    addresses: Annotated[
        list[str] | None,
        typer.Argument(
            help="HOST:PORT of each agent port agents may dial (each node, or one load "
            "balancer). None given: show the list."
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the list: agents dial the agent port.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json")] = False,
    code: StepUpOpt = None,
) -> None:
    """Show or set the agent addresses handed to agents at enrollment and at each connection."""
    if clear and addresses:
        raise CliError("Give addresses or --clear, not both.")
    if not addresses and not clear:
        current = Api.from_profile().get("/settings/agent-addresses")
    else:
        current = Api.from_profile(step_up_code=code).put(
            "/settings/agent-addresses", json={"addresses": addresses or []}
        )
    if json_output:
        emit_json(current)
        return
    listed = current["addresses"]
    console.print(
        f"{'agent-addresses':28} {', '.join(listed) if listed else '(none: the agent port)'}",
        markup=False,
    )
    console.print(f"{'agents dial':28} {', '.join(current['agents_dial'])}", markup=False)
