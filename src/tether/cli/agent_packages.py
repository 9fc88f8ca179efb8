"""`tether agent install-command`: the platform builds and serves an agent package, and this
prints the one line that installs it on an endpoint (docs/adr/0052)."""

from typing import Annotated

import httpx
import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.output import emit_json
from tether.cli.times import parse_duration

# A first build freezes the agent with PyInstaller on the platform host: minutes, once per version.
BUILD_TIMEOUT = httpx.Timeout(900.0, connect=10.0)


def install_command(
    segment: Annotated[str, typer.Option(help="Device segment the installed hosts join.")],
    fmt: Annotated[str, typer.Option("--format", help="deb, rpm or tar.")] = "deb",
    uses: Annotated[int, typer.Option(help="How many endpoints may enroll with it.")] = 1,
    expires: Annotated[str, typer.Option(help="Lifetime of the link and token: 30m, 24h, 7d.")] = (
        "24h"
    ),
    json_output: Annotated[bool, typer.Option("--json")] = False,
    code: StepUpOpt = None,
) -> None:
    """Have the platform build and serve an agent package; print the line that installs it."""
    created = Api.from_profile(step_up_code=code).post(
        "/agent-packages",
        json={
            "format": fmt,
            "segment": segment,
            "uses": uses,
            "expires_in_seconds": parse_duration(expires),
        },
        timeout=BUILD_TIMEOUT,
    )
    if json_output:
        emit_json(created)
        return
    # The command alone on stdout, so it can be piped or pasted; the rest to stderr.
    print(created["command"])
    typer.echo(
        f"{created['format']} package {created['id']} for segment {created['segment']} "
        f"({created['uses']} use(s), token {created['token_id']}), sha256 {created['sha256']}, "
        f"served until {created['expires_at']}; run the line above as root on the endpoint.",
        err=True,
    )
