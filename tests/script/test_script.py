"""tether.script used directly: outside an agent, processes and kill with real processes."""

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import tether.script
from tests.agent.script_recorder import wait_gone
from tether.script import ScriptError, client, kill, processes

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX processes")

NOT_IN_AGENT = "tether.script only works inside a script run by a Tether agent."


def test_the_public_surface() -> None:
    assert sorted(tether.script.__all__) == [
        "ScriptError",
        "download",
        "isolate",
        "isolation_status",
        "kill",
        "log",
        "params",
        "processes",
        "row",
        "unisolate",
        "upload",
    ]


@pytest.fixture
def outside_an_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        tether.script.channel.ENV_ADDRESS,
        tether.script.channel.ENV_SECRET,
        tether.script.channel.ENV_AGENT_PID,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client, "_connection", None)


@pytest.mark.usefixtures("outside_an_agent")
@pytest.mark.parametrize(
    "call",
    [
        lambda: tether.script.params,
        lambda: tether.script.row(a=1),
        lambda: tether.script.log("x"),
        lambda: tether.script.upload("/etc/hostname"),
        lambda: tether.script.download("tool", "/tmp/tool"),
    ],
)
def test_outside_an_agent_every_channel_call_says_so(call: object) -> None:
    assert callable(call)
    with pytest.raises(ScriptError, match=NOT_IN_AGENT):
        call()


def test_a_plain_python_process_gets_the_sentence() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_SCRIPT")}
    result = subprocess.run(
        [sys.executable, "-c", "import tether.script\nprint(tether.script.params)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"tether.script.ScriptError: {NOT_IN_AGENT}")


@pytest.mark.usefixtures("outside_an_agent")
def test_a_bad_row_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ScriptError, match="holds a number that is not finite"):
        tether.script.row(x=float("nan"))


def test_unknown_attributes_are_attribute_errors() -> None:
    with pytest.raises(AttributeError):
        _ = tether.script.parameters


def test_processes_lists_this_process_with_its_details() -> None:
    mine = [p for p in processes() if p["pid"] == os.getpid()]
    assert len(mine) == 1
    me = mine[0]
    assert set(me) == {"pid", "ppid", "name", "username", "cmdline", "exe", "create_time"}
    assert me["ppid"] == os.getppid()
    assert Path(me["exe"]).resolve() == Path(sys.executable).resolve()
    assert isinstance(me["create_time"], float)
    assert isinstance(me["cmdline"], list)


@posix_only
async def test_kill_kills_one_process() -> None:
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        assert kill(sleeper.pid) == [sleeper.pid]
        # kill() waits for it, which reaps our own child: it is gone, not a zombie.
        assert not psutil.pid_exists(sleeper.pid)
    finally:
        sleeper.kill()


@posix_only
async def test_kill_with_tree_kills_the_descendants() -> None:
    with subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True
    ) as shell:
        assert shell.stdout is not None
        grandchild = int(shell.stdout.readline())
        try:
            assert kill(shell.pid, tree=True) == sorted([shell.pid, grandchild])
            shell.wait(timeout=5)
            assert await wait_gone(grandchild)
        finally:
            shell.kill()


@posix_only
def test_kill_refuses_this_process_and_process_1() -> None:
    with pytest.raises(ScriptError, match="is not killed"):
        kill(os.getpid())
    with pytest.raises(ScriptError, match="is not killed"):
        kill(1)


def test_kill_refuses_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tether.script.channel.ENV_AGENT_PID, str(os.getppid()))
    with pytest.raises(ScriptError, match=f"Process {os.getppid()} is the agent"):
        kill(os.getppid())


def test_kill_of_a_pid_that_is_not_running_is_a_script_error() -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with pytest.raises(ScriptError, match="No process with id"):
        kill(int(finished.stdout))
