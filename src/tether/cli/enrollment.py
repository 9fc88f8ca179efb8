"""`tether enroll-token create|list|revoke`."""

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.output import emit_json, table
from tether.cli.times import parse_duration, parse_instant, short_time

token_app = typer.Typer(help="Enrollment tokens for new endpoints.", no_args_is_help=True)


@token_app.command("create")
def create(
    segment: Annotated[str, typer.Option(help="Device segment the new hosts join.")] = "default",
    uses: Annotated[int, typer.Option(help="How many endpoints may enroll with it.")] = 1,
    expires: Annotated[str, typer.Option(help="Lifetime: 30m, 24h, 7d.")] = "24h",
    json_output: Annotated[bool, typer.Option("--json")] = False,
    code: StepUpOpt = None,
) -> None:
    """Print a token that carries everything an endpoint needs to enroll."""
    created = Api.from_profile(step_up_code=code).post(
        "/enrollment-tokens",
        json={"segment": segment, "uses": uses, "expires_in_seconds": parse_duration(expires)},
    )
    if json_output:
        emit_json(created)
    else:
        # The token alone on stdout, so `$(tether enroll-token create)` works in scripts.
        print(created["token"])
        typer.echo(
            f"segment {created['segment']}, {created['uses']} use(s), "
            f"expires {created['expires_at']}",
            err=True,
        )


@token_app.command("list")
def list_tokens(json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List enrollment tokens and how many uses they have left."""
    tokens = Api.from_profile().get("/enrollment-tokens")
    if json_output:
        emit_json(tokens)
    else:
        table(
            [{**t, "state": _state(t), "expires_at": short_time(t["expires_at"])} for t in tokens],
            [
                ("id", "ID"),
                ("segment", "Segment"),
                ("uses", "Used"),
                ("max_uses", "Of"),
                ("expires_at", "Expires"),
                ("created_by", "By"),
                ("state", "State"),
            ],
        )


def _state(token: dict[str, Any]) -> str:
    if token["revoked_at"]:
        return f"revoked by {token['revoked_by']}"
    if token["uses"] >= token["max_uses"]:
        return "used up"
    if parse_instant(token["expires_at"]) <= datetime.now(UTC):
        return "expired"
    return "usable"


@token_app.command("revoke")
def revoke(
    token: Annotated[
        str, typer.Argument(help="The token's number ('tether enroll-token list') or the token.")
    ],
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stop a token enrolling anything more, at once; hosts it enrolled stay enrolled."""
    revoked = Api.from_profile().post("/enrollment-tokens/revoke", json={"token": token})
    if json_output:
        emit_json(revoked)
    else:
        typer.echo(
            f"Revoked enrollment token {revoked['id']} (segment {revoked['segment']}, "
            f"{revoked['uses']} of {revoked['max_uses']} use(s) spent)."
        )
