"""`tether sessions` and `tether sessions end ID`: your sessions, or (admins) another user's."""

from typing import Annotated
from urllib.parse import quote

import typer

from tether.cli.client import Api
from tether.cli.output import console, emit_json, table

sessions_app = typer.Typer(
    help="Your open sessions (admins: --user NAME for someone else's).",
    invoke_without_command=True,
)
UserOpt = Annotated[
    str | None, typer.Option("--user", help="Another user's sessions (admins only).")
]


def _base(user: str | None) -> str:
    return f"/users/{quote(user, safe='')}/sessions" if user else "/auth/sessions"


@sessions_app.callback()
def list_sessions(
    ctx: typer.Context,
    user: UserOpt = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List open sessions; the one this CLI uses is marked."""
    if ctx.invoked_subcommand is not None:
        return
    found = Api.from_profile().get(_base(user))
    if json_output:
        emit_json(found)
        return
    rows = [
        {
            **s,
            "current": "this one" if s["current"] else "",
            "mfa_verified": "yes" if s["mfa_verified"] else "no",
        }
        for s in found
    ]
    table(
        rows,
        [
            ("id", "ID"),
            ("client", "Client"),
            ("source", "From"),
            ("created_at", "Started"),
            ("last_used_at", "Last used"),
            ("mfa_verified", "2nd factor"),
            ("current", ""),
        ],
    )


@sessions_app.command("end")
def end(session_id: str, user: UserOpt = None) -> None:
    """End one session (not the one this CLI uses: 'tether logout' ends that)."""
    Api.from_profile().delete(f"{_base(user)}/{quote(session_id, safe='')}")
    console.print(f"Session {session_id} ended.", markup=False)
