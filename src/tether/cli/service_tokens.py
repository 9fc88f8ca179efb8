"""`tether service-token create|list|revoke` (admins): tokens for automation, bound to a tier,
segments, an expiry and source networks. The token is printed once, at creation."""

from typing import Annotated

import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json, plain, table
from tether.cli.times import parse_duration
from tether.protocol import TIERS

service_token_app = typer.Typer(
    help="Service tokens for automation (admins only).", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TIER_NAMES = ", ".join(t.value for t in TIERS)


@service_token_app.command("create")
def create(
    name: str,
    tier: Annotated[str, typer.Option("--tier", help=f"Its Active Response tier ({TIER_NAMES}).")],
    segment: Annotated[
        list[str], typer.Option("--segment", help="A segment it may act in (repeat for more).")
    ],
    expires: Annotated[
        str, typer.Option("--expires", help="How long it lives: 30m, 12h, 90d (at most 365d).")
    ],
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="An address or network it may call from (repeat)."),
    ] = None,
    json_output: JsonOpt = False,
    code: StepUpOpt = None,
) -> None:
    """Create a service token; it is printed once and never again."""
    if tier not in {t.value for t in TIERS}:
        raise CliError(f"{tier!r} is not a tier; the tiers are {TIER_NAMES}.")
    body = {
        "name": name,
        "tier": tier,
        "segments": segment,
        "expires_in_seconds": parse_duration(expires),
        "sources": source or [],
    }
    issued = Api.from_profile(step_up_code=code).post("/service-tokens", json=body)
    if json_output:
        emit_json(issued)
        return
    console.print(
        f"Service token {plain(issued['name'])} ({plain(issued['tier'])} tier, segments "
        f"{plain(', '.join(issued['segments']))}, until {plain(issued['expires_at'])}); shown "
        "once, store it now:",
        markup=False,
    )
    console.print(plain(issued["token"]), markup=False, highlight=False)


@service_token_app.command("list")
def list_tokens(json_output: JsonOpt = False) -> None:
    """List service tokens with their bounds and last use (never the tokens)."""
    tokens = Api.from_profile().get("/service-tokens")
    if json_output:
        emit_json(tokens)
        return
    table(
        tokens,
        [
            ("name", "Name"),
            ("tier", "Tier"),
            ("segments", "Segments"),
            ("sources", "Sources"),
            ("expires_at", "Expires"),
            ("revoked_at", "Revoked"),
            ("last_used_at", "Last used"),
            ("last_used_from", "From"),
        ],
    )


@service_token_app.command("revoke")
def revoke(name: str, json_output: JsonOpt = False) -> None:
    """Revoke a service token at once; its queued jobs are withdrawn."""
    revoked = Api.from_profile().delete(f"/service-tokens/{name}")
    if json_output:
        emit_json(revoked)
    else:
        console.print(f"Service token {plain(revoked['name'])} is revoked.", markup=False)
