"""The `tether` command: one entry point, groups for the analyst, the operator and the endpoint.

This module is the composition root. The analyst commands (`tether.cli`) import the protocol
only; `server` and `agent` commands import their heavy packages inside the command bodies.
"""

import sys
from typing import NoReturn

import typer

from tether.agent.commands import agent_app
from tether.cli import agent_packages, files, hosts, isolation, jobs, processes, run, session, shell
from tether.cli.audit import audit_app
from tether.cli.enrollment import token_app
from tether.cli.mfa import mfa_app
from tether.cli.scripts import script_app
from tether.cli.segments import segment_app
from tether.cli.service_tokens import service_token_app
from tether.cli.sessions import sessions_app
from tether.cli.settings import settings_app
from tether.cli.upgrades import upgrade as upgrade_agents
from tether.cli.users import role_app, user_app
from tether.errors import TetherError
from tether.packaging import commands as packaging
from tether.packaging.upgrade_bundle import upgrade_bundle
from tether.quickstart import up
from tether.server.commands import server_app

app = typer.Typer(
    help="Tether: audited live response on your endpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(up)
app.command()(session.login)
app.command()(session.logout)
app.command()(session.whoami)
app.command("hosts")(hosts.list_hosts)
app.command("ping")(hosts.ping)
app.command("shell")(shell.shell)
app.add_typer(hosts.host_app, name="host")
app.command("jobs")(jobs.list_jobs)
app.add_typer(jobs.job_app, name="job")
app.command("actions")(jobs.list_actions)
app.command("run")(run.run)
app.command("ps")(processes.ps)
app.command("kill")(processes.kill)
app.command("isolate")(isolation.isolate)
app.command("unisolate")(isolation.unisolate)
app.add_typer(isolation.isolation_app, name="isolation")
app.command("get")(files.get)
app.command("put")(files.put)
app.add_typer(files.files_app, name="files")
app.add_typer(segment_app, name="segment")
app.add_typer(script_app, name="script")
app.add_typer(token_app, name="enroll-token")
app.add_typer(audit_app, name="audit")
app.add_typer(user_app, name="user")
app.add_typer(role_app, name="role")
app.add_typer(service_token_app, name="service-token")
app.add_typer(mfa_app, name="mfa")
app.add_typer(sessions_app, name="sessions")
app.add_typer(settings_app, name="settings")
app.add_typer(server_app, name="server")
# The platform host's side of `tether agent`: the bundle and the packages (not in `tether-agent`).
agent_app.command("bundle")(packaging.bundle)
agent_app.command("package")(packaging.package)
agent_app.command("install-command")(agent_packages.install_command)
# Signed self-upgrade (docs/adr/0051): the archive on the platform host, the rollout via the API.
agent_app.command("upgrade-bundle")(upgrade_bundle)
agent_app.command("upgrade")(upgrade_agents)
app.add_typer(agent_app, name="agent")


def main() -> NoReturn:
    """Run the command; any TetherError becomes one line on stderr and exit status 1."""
    try:
        # Outside standalone mode click hands back the status of a `typer.Exit` instead of
        # raising it: pass it on, or `tether ping` and `tether audit verify` would exit 0.
        status = app(standalone_mode=False)
    except TetherError as exc:
        typer.echo(f"tether: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("tether: aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # usage errors
        import click

        # Typer 0.29 parses with its own copy of click, whose exceptions derive from
        # TyperException and not from click's: check both, or a mistyped option is a traceback.
        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
