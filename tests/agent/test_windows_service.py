"""The Windows service's command lines and stop logic; nothing here talks to a Windows SCM."""

import asyncio
from collections.abc import Sequence
from pathlib import PureWindowsPath

import pytest
from typer.testing import CliRunner

from tether.agent import windows_service
from tether.agent.commands import agent_app
from tether.agent.errors import AgentRefused, IsolationFailed
from tether.agent.windows_service import (
    ServiceError,
    ToolResult,
    exit_status,
    install,
    install_commands,
    remove,
    serve,
    service_command_line,
)

SC = r"C:\Windows\System32\sc.exe"
PYTHON = r"C:\Program Files\Tether\python.exe"
STATE = PureWindowsPath(r"C:\ProgramData\Tether\agent")


class Tools:
    """sc.exe as a list of calls and canned answers."""

    def __init__(self, answers: dict[str, ToolResult] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}
        self.queries = 0

    def __call__(self, argv: Sequence[str]) -> ToolResult:
        self.calls.append(list(argv))
        verb = argv[1]
        if verb == "query":
            self.queries += 1
            state = "STOPPED" if self.queries >= 2 else "STOP_PENDING"
            return ToolResult(0, f"SERVICE_NAME: TetherAgent\n        STATE : 1  {state}")
        return self.answers.get(verb, ToolResult(0, "[SC] SUCCESS"))


def test_the_command_line_is_quoted_so_no_other_program_runs() -> None:
    # Unquoted, "C:\Program Files\..." would run C:\Program.exe as SYSTEM.
    assert service_command_line(PYTHON, STATE) == (
        '"C:\\Program Files\\Tether\\python.exe" -m tether agent service run --state-dir '
        "C:\\ProgramData\\Tether\\agent"
    )


def test_the_bundles_service_runs_its_own_executable_without_dash_m() -> None:
    bundle = PureWindowsPath("C:/Program Files/Tether/tether-agent.exe")
    assert service_command_line(str(bundle), STATE, frozen=True) == (
        '"C:\\Program Files\\Tether\\tether-agent.exe" service run --state-dir '
        "C:\\ProgramData\\Tether\\agent"
    )


def test_install_registers_localsystem_auto_start_with_crash_recovery_only() -> None:
    commands = install_commands(PYTHON, STATE)
    assert all(argv[0] == SC for argv in commands)
    assert [argv[1] for argv in commands] == [
        "create",
        "description",
        "failure",
        "failureflag",
        "start",
    ]
    create = commands[0]
    assert create[create.index("start=") + 1] == "auto"
    assert create[create.index("obj=") + 1] == "LocalSystem"
    assert create[create.index("binPath=") + 1].startswith('"C:\\Program Files\\Tether\\')
    assert commands[2][3:] == [
        "reset=",
        "86400",
        "actions=",
        "restart/5000/restart/30000/restart/300000",
    ]
    # A stop reported with an exit code (a revoked agent) does not trigger the recovery.
    assert commands[3][3:] == ["0"]


def test_a_refused_install_leaves_no_service_behind() -> None:
    tools = Tools(
        {"failure": ToolResult(5, "[SC] ChangeServiceConfig2 FAILED 5:\n\nAccess is denied.")}
    )
    with pytest.raises(ServiceError) as caught:
        install(PYTHON, STATE, run=tools)
    assert str(caught.value) == (
        "Windows refused to failure the TetherAgent service: Access is denied."
    )
    assert [argv[1] for argv in tools.calls] == ["create", "description", "failure", "delete"]


async def test_remove_releases_isolation_before_stopping_then_deletes() -> None:
    order: list[str] = []
    tools = Tools()

    async def release() -> None:
        order.append("release")

    def run(argv: Sequence[str]) -> ToolResult:
        order.append(argv[1])
        return tools(argv)

    async def no_wait(seconds: float) -> None:
        return None

    await remove(release, run=run, sleep=no_wait)
    assert order == ["release", "stop", "query", "query", "delete"]


async def test_a_refused_release_leaves_the_service_in_place() -> None:
    tools = Tools()

    async def release() -> None:
        raise IsolationFailed("Windows Firewall refused to remove the isolation rules: denied.")

    with pytest.raises(IsolationFailed):
        await remove(release, run=tools)
    assert tools.calls == []


async def test_a_service_that_does_not_stop_is_not_deleted() -> None:
    calls: list[str] = []

    def run(argv: Sequence[str]) -> ToolResult:
        calls.append(argv[1])
        return ToolResult(0, "STATE : 3  STOP_PENDING")

    async def release() -> None:
        return None

    async def no_wait(seconds: float) -> None:
        return None

    with pytest.raises(ServiceError, match="did not stop within 0 s; it was not removed"):
        await remove(release, run=run, sleep=no_wait, wait_seconds=0)
    assert "delete" not in calls


class Agent:
    def __init__(self, ends_with: BaseException | None = None) -> None:
        self.ends_with = ends_with
        self.reported = False
        self.cancelled = False

    async def run_forever(self) -> None:
        if self.ends_with is not None:
            raise self.ends_with
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def report_isolation(self) -> None:
        self.reported = True


async def test_a_stop_reports_isolation_then_ends_the_agent() -> None:
    agent, stop = Agent(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stop.set)
    assert await serve(agent, stop) == 0
    assert agent.reported
    assert agent.cancelled


async def test_a_refused_agent_stops_for_good_and_a_crash_is_a_crash() -> None:
    refused = Agent(AgentRefused("This host was revoked."))
    assert await serve(refused, asyncio.Event()) == 78
    assert exit_status(78) == (1066, 78)  # a reported stop: no recovery action runs
    assert exit_status(0) == (0, 0)
    with pytest.raises(RuntimeError):
        await serve(Agent(RuntimeError("bug")), asyncio.Event())


@pytest.mark.parametrize("verb", ["install", "remove"])
def test_the_service_commands_say_they_are_for_windows(verb: str) -> None:
    result = CliRunner().invoke(agent_app, ["service", verb])
    assert result.exit_code == 2
    assert "Windows services exist on Windows only" in result.output


def test_service_run_by_hand_is_refused_off_windows() -> None:
    with pytest.raises(ServiceError, match="Windows services exist on Windows only"):
        windows_service.run_as_service(lambda: Agent())
