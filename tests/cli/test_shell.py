"""`tether shell`: commands in one audited session against an in-process platform, where a
scripted agent answers each job through the dispatcher as a real one would."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update
from typer.testing import CliRunner

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import terminal_text
from tether.cli.shell import Shell, render_result
from tether.main import app
from tether.protocol import ACTIONS, ActionSpec, JobOutput, JobStatus, Permission
from tether.protocol.shell import ShellInputError, parse_params, python_command
from tether.server.app import create_app
from tether.server.services.dispatch import Dispatcher
from tether.server.services.platform import Platform
from tether.server.store.db import utcnow
from tether.server.store.tables import audit_records, segments

from ..server.support import FakeLink, add_host


class _Anything(BaseModel):
    model_config = ConfigDict(extra="allow")


@pytest.fixture(autouse=True)
def endpoint_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shell's actions are declared by other work in progress; these stand-ins accept any
    # arguments and results, so the tests pin what the shell sends, not the final models.
    for name in ("files.list", "files.get", "processes.list", "processes.kill", "script.run"):
        monkeypatch.setitem(
            ACTIONS,
            name,
            ActionSpec(
                name=name,
                args=_Anything,
                result=_Anything,
                permission=Permission.ACTIVE_RESPONSE,
                timeout_seconds=60,
                description="test",
            ),
        )


@dataclass
class Reply:
    state: str = "succeeded"
    result: dict[str, Any] | None = None
    error: str | None = None
    output: list[tuple[str, str | dict[str, Any]]] = field(default_factory=list)


Answer = Callable[[str, dict[str, Any]], Reply]


class ScriptedAgent(FakeLink):
    """An online host whose agent answers every job it is sent with `answer(action, args)`."""

    def __init__(self, host_id: str, dispatcher: Dispatcher, answer: Answer) -> None:
        super().__init__(host_id)
        self._dispatcher = dispatcher
        self._answer = answer
        self.jobs: list[dict[str, Any]] = []
        self.after_job: Callable[[], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def send_text(self, text: str) -> None:
        await super().send_text(text)
        frame = json.loads(text)
        if frame["type"] == "job":
            self.jobs.append(frame)
            task = asyncio.create_task(self._run(frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, frame: dict[str, Any]) -> None:
        job_id = frame["job_id"]
        reply = self._answer(frame["action"], frame["args"])
        await self._dispatcher.on_status(self.host_id, JobStatus(job_id=job_id, state="running"))
        for seq, (stream, payload) in enumerate(reply.output):
            text = payload if isinstance(payload, str) else None
            fields = payload if isinstance(payload, dict) else None
            await self._dispatcher.on_output(
                self.host_id,
                JobOutput(job_id=job_id, seq=seq, stream=stream, text=text, fields=fields),
            )
        await self._dispatcher.on_status(
            self.host_id,
            JobStatus(job_id=job_id, state=reply.state, result=reply.result, error=reply.error),
        )
        if self.after_job is not None:
            await self.after_job()


class LoopBridge(httpx.BaseTransport):
    """A synchronous transport for the CLI's client that serves each request with the
    platform's ASGI app on the test's event loop (the CLI runs in a worker thread)."""

    def __init__(self, platform: Platform, loop: asyncio.AbstractEventLoop) -> None:
        self._asgi = httpx.ASGITransport(app=create_app(platform))
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def call() -> tuple[int, list[tuple[str, str]], bytes]:
            response = await self._asgi.handle_async_request(request)
            body = await response.aread()
            return response.status_code, response.headers.multi_items(), body

        status, headers, body = asyncio.run_coroutine_threadsafe(call(), self._loop).result(60)
        return httpx.Response(status, headers=headers, content=body)


EXITED_1 = "The script exited with code 1."


def answer(action: str, args: dict[str, Any]) -> Reply:
    if action == "files.list":
        if args["path"] not in {"/", "/etc"}:
            return Reply("failed", error=f"No such directory: {args['path']}")
        entries = [{"name": "passwd", "size": 1234}, {"name": "hosts", "size": 99}]
        return Reply(result={"path": args["path"], "entries": entries})
    if action == "script.run" and "'/missing'" in args["source"]:
        # What the generated cat does when it cannot read: one sentence on stderr, exit code 1.
        said = "cat: cannot read /missing: No such file or directory.\n"
        return Reply("failed", error=EXITED_1, output=[("stderr", said)])
    if action == "script.run" and "'quiet'" in args["source"]:
        return Reply("failed", error=EXITED_1)
    if action == "script.run":
        return Reply(
            output=[("stdout", "root:x:0:0:\x1b[31mroot\x1b[0m\r\n"), ("stderr", "warn\n")],
            result={"exit_code": 0},
        )
    if action == "processes.list":
        return Reply(result={"processes": [{"pid": 1, "name": "init"}]})
    if action == "processes.kill":
        return Reply(result={"killed": [args["pid"]]})
    if action == "files.get":
        return Reply(result={"sha256": "ab" * 32, "size": 1234})
    return Reply("failed", error="unexpected")


@dataclass
class Setup:
    platform: Platform
    agent: ScriptedAgent
    host_id: str

    async def shell(self, *commands: str) -> Any:
        args = ["shell", "web-1"]
        for command in commands:
            args += ["--command", command]
        return await asyncio.to_thread(CliRunner().invoke, app, args)

    async def audit(self, action: str) -> list[dict[str, Any]]:
        async with self.platform.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(audit_records.c.details).where(audit_records.c.action == action)
                )
            ).scalars()
            return [json.loads(r) for r in rows]


@pytest.fixture
async def setup(
    platform: Platform, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Setup:
    host_id = await add_host(platform.engine, "web-1", segment="ir")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "ir").values(active_response=True)
        )
    agent = ScriptedAgent(host_id, platform.dispatcher, answer)
    platform.presence.attach(agent)
    token = admin["authorization"].removeprefix("Bearer ")
    ca_pem = platform.settings.ca_cert.read_text()
    loop = asyncio.get_running_loop()

    def from_profile(_cls: type[Api]) -> Api:
        return Api("https://tether.test", ca_pem, token, transport=LoopBridge(platform, loop))

    monkeypatch.setattr(Api, "from_profile", classmethod(from_profile))
    monkeypatch.setenv("COLUMNS", "200")
    return Setup(platform, agent, host_id)


async def test_commands_run_in_one_audited_session_and_stream_their_output(
    setup: Setup,
) -> None:
    result = await setup.shell(
        "ls /etc", "cd /etc", "cat passwd", "ps", "kill 4242 --tree", "py 1 + 1", "get hosts"
    )
    # The fake agent claims the file without sending it: the platform does not believe it.
    assert result.exit_code == 1, result.output
    assert (
        "The endpoint reported a file the platform did not receive and verify for this job"
    ) in result.output
    sent = [(job["action"], job["args"]) for job in setup.agent.jobs]
    assert [a for a, _ in sent] == [
        "files.list",
        "files.list",
        "script.run",
        "processes.list",
        "processes.kill",
        "script.run",
        "files.get",
    ]
    assert sent[0][1] == {"path": "/etc"}
    assert sent[1][1] == {"path": "/etc"}
    # cat resolved the path against the directory cd moved to, as a literal, not as code.
    assert "open('/etc/passwd', 'rb')" in sent[2][1]["source"]
    assert sent[4][1] == {"pid": 4242, "tree": True}
    assert "'1 + 1'" in sent[5][1]["source"]
    assert sent[6][1] == {"path": "/etc/hosts"}

    # Output streamed with the endpoint's escape sequences and carriage returns removed.
    assert "root:x:0:0:root\n" in result.stdout
    assert "\x1b" not in result.stdout
    assert "\r" not in result.stdout
    assert "warn" in result.stderr
    # List results as tables.
    assert "passwd" in result.stdout
    assert "1234" in result.stdout
    assert "init" in result.stdout
    # The script's own result is not repeated after its output.
    assert "exit_code" not in result.stdout

    (session,) = await setup.platform.live_sessions.find(include_ended=True)
    assert (session.open, session.end_reason, session.commands, session.cwd) == (
        False,
        "stopped by the user",
        7,
        "/etc",
    )
    (start,) = await setup.audit("live_session.start")
    (stop,) = await setup.audit("live_session.stop")
    assert start["hostname"] == "web-1"
    assert (stop["reason"], stop["commands"]) == ("stopped by the user", 7)


async def test_a_failed_command_keeps_the_directory_and_makes_the_status_1(
    setup: Setup,
) -> None:
    result = await setup.shell("cd /nope", "ls")
    assert result.exit_code == 1
    assert "failed: No such directory: /nope" in result.stderr
    assert [job["args"] for job in setup.agent.jobs] == [{"path": "/nope"}, {"path": "/"}]


async def test_a_failed_cat_prints_its_one_sentence_and_no_second_line(setup: Setup) -> None:
    def between_start_and_stop(stderr: str) -> list[str]:
        started, *said, stopped = stderr.splitlines()
        assert started.startswith("Live session ")
        assert stopped.endswith(" stopped.")
        return said

    result = await setup.shell("cat /missing")
    assert result.exit_code == 1
    said = between_start_and_stop(result.stderr)
    assert said == ["cat: cannot read /missing: No such file or directory."]
    # A shell command that failed without a sentence of its own still gets the agent's.
    quiet = await setup.shell("py 'quiet'")
    assert quiet.exit_code == 1
    assert between_start_and_stop(quiet.stderr) == [f"failed: {EXITED_1}"]


async def test_put_and_run_refusals_are_one_sentence(setup: Setup) -> None:
    result = await setup.shell("put ./evidence.bin /tmp/evidence.bin", "run triage")
    assert result.exit_code == 1
    assert "Cannot read evidence.bin: No such file or directory." in result.stderr
    assert "run: No script is named 'triage'." in result.stderr
    assert setup.agent.jobs == []


async def test_an_idle_expired_session_ends_the_shell_with_one_sentence(setup: Setup) -> None:
    async def idle_for_31_minutes() -> None:
        await setup.platform.live_sessions.sweep(utcnow() + timedelta(minutes=31))

    setup.agent.after_job = idle_for_31_minutes
    result = await setup.shell("ps", "ls", "ps")
    assert result.exit_code == 1
    assert (
        "The live session ended (idle for 30 minutes); run 'tether shell web-1' to start a new one."
    ) in result.stderr
    # The first command ran; the second was refused; the third never sent.
    assert [job["action"] for job in setup.agent.jobs] == ["processes.list"]


def test_terminal_text_strips_escapes_but_keeps_lines_and_tabs() -> None:
    hostile = "a\x1b[2J\x1b]0;owned\x07b\rc\x00d\x9be\tf\x7fg\x1bPq\x1b\\h\n"
    # Whole escape sequences go (\x9b is a one-byte CSI, ended by 'e'); other controls show '?'.
    assert terminal_text(hostile) == "abc?d\tf?gh\n"
    assert terminal_text("plain text\n") == "plain text\n"


def test_paths_resolve_against_the_directory() -> None:
    shell = Shell.__new__(Shell)
    shell.cwd, shell._windows = "/var/log", False
    assert shell.resolve("../tmp") == "/var/tmp"
    assert shell.resolve("/etc/./passwd") == "/etc/passwd"
    assert shell.resolve("//etc") == "/etc"
    shell.cwd, shell._windows = "C:\\Users", True
    assert shell.resolve("..\\Windows") == "C:\\Windows"
    assert shell.resolve("D:\\x") == "D:\\x"


def test_unknown_result_shapes_print_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    render_result({"a": {"nested": 1}, "b": [1, 2]})
    printed = capsys.readouterr().out
    assert json.loads(printed) == {"a": {"nested": 1}, "b": [1, 2]}
    render_result({"killed": 3, "note": "bad\x1b[2Jname"})
    assert capsys.readouterr().out == "killed: 3\nnote: bad?[2Jname\n"


def test_params_and_one_liners() -> None:
    assert parse_params(["n=3", "name=sshd", "deep=true"]) == {
        "n": 3,
        "name": "sshd",
        "deep": True,
    }
    with pytest.raises(ShellInputError, match="'oops' is not KEY=VALUE"):
        parse_params(["oops"])
    source = python_command("import os; os.getpid()").args["source"]
    namespace: dict[str, Any] = {}
    exec(compile(source, "<test>", "exec"), namespace)  # the statement form runs without error
    assert namespace["_code"] == "import os; os.getpid()"


async def test_a_refused_start_is_one_sentence_and_no_session(setup: Setup) -> None:
    async with setup.platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "ir").values(active_response=False)
        )
    result = await setup.shell("ps")
    assert result.exit_code == 1
    assert isinstance(result.exception, CliError)
    assert str(result.exception) == (
        "Active Response is off in segment ir, so response actions on web-1 are refused."
    )
    assert await setup.platform.live_sessions.find(include_ended=True) == []
