"""`tether-agent`: the endpoint's own command, and the entry point of the frozen agent bundle.

One executable serves two roles in a bundle (docs/adr/0042): the agent (`tether-agent run`,
`enroll`, `isolation ...`) and, with `script-child` as its first argument, the child process a
script runs in. In a bundle `sys.executable` is the bundle itself, not a Python that takes `-c`,
so the agent starts its script children as `tether-agent script-child SCRIPT AGENT_PID`: the same
embedded interpreter, with `tether.script` and psutil importable, exactly as in a virtualenv.

The script-child branch is decided before anything else is imported, so a script's start costs
no more than the interpreter's.
"""

import sys

# First argument that makes this executable a script's child process instead of the agent.
SCRIPT_CHILD = "script-child"
# First argument that makes it the supervisor of an upgraded version's trial (docs/adr/0051).
UPGRADE_TRIAL = "upgrade-trial"


def _script_child(script_path: str, agent_pid: str) -> None:
    from tether.agent.script_child import wait_for_agent

    wait_for_agent(int(agent_pid))
    from tether.script._launch import main as launch

    launch(script_path)


def main() -> None:
    """Run as a script's child (`script-child SCRIPT AGENT_PID`) or as the agent's command."""
    if len(sys.argv) == 4 and sys.argv[1] == SCRIPT_CHILD:
        _script_child(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 3 and sys.argv[1] == UPGRADE_TRIAL:
        # The supervisor of a new version's trial stays resident: nothing heavy is imported.
        from tether.agent.upgrade_trial import main as supervise

        supervise(sys.argv[2:])
        return
    import typer

    from tether.agent.commands import agent_app
    from tether.errors import TetherError

    try:
        status = agent_app(prog_name="tether-agent", standalone_mode=False)
    except TetherError as exc:
        # One sentence, as `tether agent ...` prints it; never a traceback.
        typer.echo(f"tether-agent: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # usage errors, as `tether.main` shows them
        import click

        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
