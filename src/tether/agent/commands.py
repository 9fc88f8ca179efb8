"""`tether agent enroll` and `tether agent run`."""

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tether.agent.state import default_state_dir

if TYPE_CHECKING:
    from tether.agent.isolation import Isolator
    from tether.protocol.isolation import IsolationStatus

agent_app = typer.Typer(help="Run the endpoint agent.", no_args_is_help=True)
StateOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where the agent keeps its identity (default per OS)."),
]

# Exit status when reconnecting cannot help (revoked, unknown certificate, wrong protocol);
# the systemd unit lists it in RestartPreventExitStatus so the agent does not spin.
EXIT_REFUSED = 78


@agent_app.command("enroll")
def enroll(
    server: Annotated[
        str | None, typer.Option(help="Ignored unless it disagrees with the token.")
    ] = None,
    token: Annotated[str | None, typer.Option(help="The enrollment token.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="Read the token from a file.")] = None,
    state_dir: StateOpt = None,
    hostname: Annotated[str | None, typer.Option(help="Override the reported hostname.")] = None,
) -> None:
    """Create this endpoint's key, send a CSR with the token, store the certificate."""
    from tether.agent.enroll import enroll as do_enroll
    from tether.agent.errors import EnrollmentFailed
    from tether.agent.state import StateDir
    from tether.protocol import EnrollmentToken

    if token_file is not None:
        token = token_file.read_text().strip()
    if not token:
        raise EnrollmentFailed("Give the enrollment token with --token or --token-file.")
    decoded = EnrollmentToken.decode(token)
    if server is not None and server.rstrip("/") != decoded.server_url:
        raise EnrollmentFailed(
            f"--server {server} disagrees with the token, which names {decoded.server_url}."
        )
    identity = do_enroll(token, StateDir(state_dir or default_state_dir()), hostname)
    typer.echo(f"Enrolled as host {identity.host_id}; start it with 'tether agent run'.")


@agent_app.command("run")
def run(
    state_dir: StateOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
    no_active_response: Annotated[
        bool,
        typer.Option(
            "--no-active-response",
            help="Refuse response actions whatever the platform allows (as does the file "
            "disable-active-response in the state directory).",
        ),
    ] = False,
) -> None:
    """Connect to the platform and stay connected, reconnecting with backoff."""
    from tether.agent.connection import AgentConnection
    from tether.agent.errors import AgentRefused
    from tether.agent.isolation import check_seconds_from_environment
    from tether.agent.state import StateDir
    from tether.agent.state_guard import UnsafeStateDir
    from tether.logs import configure

    configure(log_level)
    try:
        check_seconds = check_seconds_from_environment()
    except ValueError as exc:
        typer.echo(f"tether agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        # Refusing the state directory is not something a restart fixes either.
        connection = AgentConnection(
            StateDir(state_dir or default_state_dir()),
            disable_response=no_active_response,
            isolation_check_seconds=check_seconds,
        )
    except UnsafeStateDir as exc:
        typer.echo(f"tether agent: {exc}", err=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    try:
        if sys.platform != "win32":
            import uvloop

            uvloop.run(connection.run_forever())
        else:
            asyncio.run(connection.run_forever())
    except AgentRefused as exc:
        typer.echo(f"tether agent: {exc}", err=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    except KeyboardInterrupt:
        typer.echo("tether agent: stopped.", err=True)


isolation_app = typer.Typer(
    help="This endpoint's network isolation, for its owner: see it, or end it locally.",
    no_args_is_help=True,
)
agent_app.add_typer(isolation_app, name="isolation")


def _print_isolation(status: "IsolationStatus") -> None:
    if not status.isolated:
        typer.echo("Not isolated.")
        return
    since = status.since.isoformat(timespec="seconds") if status.since else "unknown"
    typer.echo(f"Isolated ({status.mode or 'unknown'} mode) since {since} by {status.backend}.")
    typer.echo(f"Platform: {', '.join(status.platform) or 'unknown'}")
    for entry in status.allow:
        ports = ",".join(str(p) for p in entry.ports) or "all ports"
        typer.echo(f"Allowed: {entry.cidr} ({ports})")


def _isolator(state_dir: Path | None) -> "Isolator":
    from tether.agent.isolation import Isolator
    from tether.agent.state import StateDir

    state = StateDir(state_dir or default_state_dir()).secure()
    return Isolator(state, state.identity().agent_url)


@isolation_app.command("status")
def isolation_status(state_dir: StateOpt = None) -> None:
    """Show whether the firewall holds the isolation rules, and which."""
    _print_isolation(asyncio.run(_isolator(state_dir).status()))


@isolation_app.command("release")
def isolation_release(state_dir: StateOpt = None) -> None:
    """Remove the isolation rules now and for good (the break-glass for the endpoint owner).

    Works whatever the platform or the local response switch says; the running agent reads the
    state directory at its next check and does not put the rules back. The platform learns it
    at its next isolation status request.
    """
    _print_isolation(asyncio.run(_isolator(state_dir).release()))
    typer.echo("Released locally; tell the analysts, whose platform still shows the last status.")
