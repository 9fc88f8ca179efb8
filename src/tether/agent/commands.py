"""`tether agent enroll`, `run`, `isolation` and (Windows) `service`."""

import asyncio
import contextlib
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
    from tether.agent.state import StateDir
    from tether.agent.state_guard import UnsafeStateDir
    from tether.agent.upgrade_trial import hand_off

    root = state_dir or default_state_dir()
    # Before anything else: an upgraded bundle runs instead of this one (docs/adr/0051), named
    # only by a state directory no other account can change (an unsafe one is refused below).
    with contextlib.suppress(UnsafeStateDir):
        hand_off(StateDir(root).secure(create=False).root, sys.argv)

    from tether.agent.connection import AgentConnection
    from tether.agent.errors import AgentRefused
    from tether.agent.isolation import check_seconds_from_environment
    from tether.agent.upgrade import RestartForUpgrade, restart_into_trial
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
            StateDir(root),
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
    except RestartForUpgrade:
        # Same process id: systemd (or whoever started the agent) keeps watching this process.
        restart_into_trial(connection.upgrader.files.root.parent)
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


service_app = typer.Typer(
    help="This agent as a Windows service (TetherAgent): install it, remove it.",
    no_args_is_help=True,
)
agent_app.add_typer(service_app, name="service")
# The service's own log, beside its key in the private state directory: a service has no
# console. Rotated at 10 MB, three kept.
SERVICE_LOG = "agent.log"


def _windows_only() -> None:
    if sys.platform != "win32":
        typer.echo(
            "tether agent: Windows services exist on Windows only; on Linux run the agent "
            "with the systemd unit (docs/operations.md).",
            err=True,
        )
        raise typer.Exit(2)


@service_app.command("install")
def service_install(state_dir: StateOpt = None) -> None:
    """Register and start the TetherAgent service (LocalSystem, automatic start, restart on a
    crash, stays stopped when the platform refuses the agent for good)."""
    from tether.agent.state import StateDir
    from tether.agent.windows_service import ServiceError, install

    _windows_only()
    state = StateDir(state_dir or default_state_dir()).secure()
    if not state.is_enrolled():
        typer.echo(f"tether agent: {state.root} holds no identity; enroll first.", err=True)
        raise typer.Exit(EXIT_REFUSED)
    try:
        install(sys.executable, state.root)
    except ServiceError as exc:
        typer.echo(f"tether agent: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("The TetherAgent service is installed and started.")


@service_app.command("remove")
def service_remove(state_dir: StateOpt = None) -> None:
    """Release isolation (reported to the platform by the agent as it stops), then stop and
    delete the TetherAgent service. The state directory, with the agent's key, stays."""
    from tether.agent.errors import AgentError
    from tether.agent.windows_service import ServiceError, remove

    _windows_only()
    isolator = _isolator(state_dir)
    try:
        asyncio.run(remove(isolator.release))
    except (ServiceError, AgentError) as exc:
        typer.echo(f"tether agent: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        "Isolation released (the agent reported it to the platform as it stopped, if it was "
        f"connected) and the TetherAgent service removed; {state_dir or default_state_dir()} "
        "still holds "
        "the agent's key: delete it to retire this endpoint."
    )


@service_app.command("run", hidden=True)
def service_run(
    state_dir: StateOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """What the Windows service manager starts; not for a console (use 'tether agent run')."""
    import logging
    from logging.handlers import RotatingFileHandler

    from tether.agent.connection import AgentConnection
    from tether.agent.isolation import check_seconds_from_environment
    from tether.agent.state import StateDir
    from tether.agent.windows_service import ServiceError, run_as_service
    from tether.logs import configure

    configure(log_level)
    root = state_dir or default_state_dir()

    def make_agent() -> AgentConnection:
        state = StateDir(root).secure()
        handler = RotatingFileHandler(
            state.root / SERVICE_LOG, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        return AgentConnection(state, isolation_check_seconds=check_seconds_from_environment())

    try:
        run_as_service(make_agent)
    except ServiceError as exc:
        typer.echo(f"tether agent: {exc}", err=True)
        raise typer.Exit(2) from exc
