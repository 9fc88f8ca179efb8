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
