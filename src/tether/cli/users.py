"""`tether user add|list|disable|enable|reset-mfa|enrollment-code|external` and `tether role
grant|revoke` (admins). The changes that hand out access take `--code` (step-up)."""

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json, plain, table
from tether.protocol import Role

user_app = typer.Typer(help="The team: accounts (admins only).", no_args_is_help=True)
role_app = typer.Typer(help="Grant or remove roles (admins only).", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ROLE_NAMES = ", ".join(r.value for r in Role)

USER_COLUMNS = [
    ("username", "User"),
    ("roles", "Roles"),
    ("mfa_enabled", "MFA"),
    ("disabled", "Disabled"),
    ("organisation", "External org"),
    ("access_expires_at", "Access until"),
]


def parse_role(name: str) -> str:
    if name not in {r.value for r in Role}:
        raise CliError(f"{name!r} is not a role; the roles are {ROLE_NAMES}.")
    return name


def parse_date(text: str) -> str:
    """YYYY-MM-DD (end of that day, UTC) or a full ISO 8601 time, as ISO text."""
    try:
        if len(text) == 10:
            moment = datetime.fromisoformat(text).replace(hour=23, minute=59, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{text!r} is not a date like 2026-12-31 or 2026-12-31T18:00Z.") from exc
    return moment.isoformat()


def _show(user: dict[str, object], json_output: bool, verb: str) -> None:
    if json_output:
        emit_json(user)
    else:
        roles = ", ".join(user["roles"]) or "none"  # type: ignore[arg-type]
        console.print(f"{verb} {plain(user['username'])} (roles: {roles}).", markup=False)


@user_app.command("add")
def add(
    name: str,
    role: Annotated[
        list[str] | None, typer.Option("--role", help=f"A role to give ({ROLE_NAMES}).")
    ] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    external: Annotated[bool, typer.Option(help="An MDR provider's user.")] = False,
    org: Annotated[str | None, typer.Option(help="The external user's organisation.")] = None,
    expires: Annotated[
        str | None, typer.Option(help="End of the external user's access (YYYY-MM-DD).")
    ] = None,
    json_output: JsonOpt = False,
    code: StepUpOpt = None,
) -> None:
    """Create a user with a password and roles (an admin or Active Response user then needs
    an enrollment code from you: 'tether user enrollment-code NAME')."""
    roles = [parse_role(r) for r in role or []]
    if (org or expires) and not external:
        raise CliError("--org and --expires are for external users; add --external.")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    body: dict[str, object] = {"username": name, "password": password, "roles": roles}
    if external:
        body.update(
            external=True,
            organisation=org,
            access_expires_at=parse_date(expires) if expires else None,
        )
    _show(Api.from_profile(step_up_code=code).post("/users", json=body), json_output, "Added")


@user_app.command("list")
def list_users(json_output: JsonOpt = False) -> None:
    """List users, their roles, MFA and external status."""
    found = Api.from_profile().get("/users")
    if json_output:
        emit_json(found)
    else:
        table(found, USER_COLUMNS)


@user_app.command("disable")
def disable(name: str, json_output: JsonOpt = False) -> None:
    """Disable a user: their sessions end at once."""
    _show(Api.from_profile().post(f"/users/{name}/disable"), json_output, "Disabled")


@user_app.command("enable")
def enable(name: str, json_output: JsonOpt = False) -> None:
    """Let a disabled user log in again."""
    _show(Api.from_profile().post(f"/users/{name}/enable"), json_output, "Enabled")


HoursOpt = Annotated[
    int, typer.Option("--hours", min=1, max=168, help="How long the code works (hours).")
]


def _show_code(issued: dict[str, str], json_output: bool, lead: str) -> None:
    if json_output:
        emit_json(issued)
        return
    console.print(lead, markup=False)
    console.print(f"Enrollment code: {issued['code']}", markup=False)
    console.print(
        f"It works once, until {issued['expires_at']}; it is shown only now. Hand it to "
        f"{issued['username']} out of band; they run "
        "'tether mfa enroll --enrollment-code CODE'.",
        markup=False,
    )


@user_app.command("reset-mfa")
def reset_mfa(
    name: str, hours: HoursOpt = 24, json_output: JsonOpt = False, code: StepUpOpt = None
) -> None:
    """Forget a user's second factor (lost phone) and print the enrollment code for a new one."""
    issued = Api.from_profile(step_up_code=code).post(
        f"/users/{name}/mfa/reset", json={"hours": hours}
    )
    _show_code(issued, json_output, f"Reset the second factor of {name}; their sessions ended.")


@user_app.command("enrollment-code")
def enrollment_code(
    name: str, hours: HoursOpt = 24, json_output: JsonOpt = False, code: StepUpOpt = None
) -> None:
    """Issue the one-time code NAME needs to enroll a second factor (never for yourself)."""
    issued = Api.from_profile(step_up_code=code).post(
        f"/users/{name}/enrollment-code", json={"hours": hours}
    )
    _show_code(issued, json_output, f"Issued an enrollment code for {name}.")


@user_app.command("external")
def external(
    name: str,
    org: Annotated[str | None, typer.Option(help="Their organisation.")] = None,
    expires: Annotated[str | None, typer.Option(help="End of access (YYYY-MM-DD).")] = None,
    internal: Annotated[bool, typer.Option(help="Mark the user internal again.")] = False,
    json_output: JsonOpt = False,
    code: StepUpOpt = None,
) -> None:
    """Mark a user as an MDR provider's (organisation, access expiry), or internal again."""
    if not internal and not org:
        raise CliError("Give the organisation with --org, or --internal.")
    body = {
        "external": not internal,
        "organisation": None if internal else org,
        "access_expires_at": parse_date(expires) if expires and not internal else None,
    }
    answer = Api.from_profile(step_up_code=code).put(f"/users/{name}/external", json=body)
    _show(answer, json_output, "Updated")


@role_app.command("grant")
def grant(user: str, role: str, json_output: JsonOpt = False, code: StepUpOpt = None) -> None:
    """Give USER the role ROLE (never yourself); a tier (collect, respond, script) replaces the one held."""
    answer = Api.from_profile(step_up_code=code).put(f"/users/{user}/roles/{parse_role(role)}")
    _show(answer, json_output, "Updated")


@role_app.command("revoke")
def revoke(user: str, role: str, json_output: JsonOpt = False, code: StepUpOpt = None) -> None:
    """Take the role ROLE from USER (never yourself; removing a tier ends their sessions)."""
    answer = Api.from_profile(step_up_code=code).delete(f"/users/{user}/roles/{parse_role(role)}")
    _show(answer, json_output, "Updated")
