"""Running an investigation script on the endpoint: limits, services, outcome, and `run_script`.

The script runs in a child process of the agent's own interpreter, never inside the agent. It
reaches the agent through `tether.script` over a local channel (`script_channel`), and the
process, its output and its tree kill live in `script_process`. The child is tied to the agent's
life and journaled before it may run the script (`script_child`, docs/adr/0031).
"""

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import psutil

import tether
from tether.agent import job_object, script_process
from tether.agent.entry import SCRIPT_CHILD
from tether.agent.journal import ScriptProcess
from tether.agent.script_channel import CallRefused, ChannelServer, Method
from tether.protocol.scripts import exit_code_sentence
from tether.script import channel

log = logging.getLogger("tether.agent.scripts")

# After the script exits, its output pipes get this long to reach their end (a process that
# left the script's group may still hold them open).
DRAIN_SECONDS = 2.0

# The child: make this agent's tether importable (even under -I), tie its life to the agent
# and wait for the agent's go, then run the script file.
_BOOTSTRAP = (
    "import sys\n"
    "if sys.argv[1] not in sys.path: sys.path.insert(0, sys.argv[1])\n"
    "from tether.agent.script_child import wait_for_agent\n"
    "wait_for_agent(int(sys.argv[3]))\n"
    "from tether.script._launch import main\n"
    "main(sys.argv[2])\n"
)


@dataclass(frozen=True)
class ScriptLimits:
    """What one script run may use."""

    timeout_seconds: float = 600.0
    max_output_bytes: int = 8 * 1024 * 1024  # stdout and stderr together
    max_rows: int = 10_000


class ScriptServices(Protocol):
    """What the agent offers a running script over the channel, besides params, rows and logs.

    A method's exception goes back to the script as `tether.script.ScriptError` with its message,
    so messages should be one sentence an analyst can act on.
    """

    async def upload(self, path: str) -> dict[str, Any]:
        """Send endpoint file `path` to the platform; returns {"sha256", "size", "path"}."""
        ...

    async def download(self, name: str, dest: str) -> dict[str, Any]:
        """Write platform library file `name` to endpoint path `dest`; returns its details."""
        ...

    async def isolate(self, mode: str) -> dict[str, Any]:
        """Isolate the endpoint (`outbound` or `full`); returns the isolation status."""
        ...

    async def unisolate(self) -> dict[str, Any]:
        """Release the endpoint from isolation; returns the isolation status."""
        ...

    async def isolation_status(self) -> dict[str, Any]:
        """What the endpoint's firewall holds for isolation."""
        ...


class ProcessRecorder(Protocol):
    """Where a run journals its child, so a killed agent's next start can end what is left of it
    and say how the job ended (docs/adr/0031)."""

    def started(self, process: ScriptProcess) -> None:
        """The child exists and has not run the script yet; return only once this is durable."""
        ...

    def descendants(self, seen: dict[int, float]) -> None:
        """The child started these processes (pid -> create time)."""
        ...

    def exited(self, exit_code: int) -> None:
        """The child ended with `exit_code` (negative: the signal that ended it)."""
        ...


@dataclass(frozen=True)
class ScriptOutcome:
    """How a run ended.

    `exit_code` is None when no process was started; negative when a signal ended it (POSIX).
    `error` is None only for a clean run (exit code 0, no limit hit); otherwise it is one
    sentence, the most important reason first: syntax error, timeout, cancel, output limit, row
    limit, non-zero exit.
    """

    exit_code: int | None
    timed_out: bool
    cancelled: bool
    output_truncated: bool
    rows_truncated: bool
    error: str | None


def syntax_error(source: str) -> str | None:
    """One sentence describing why `source` does not compile, or None when it does."""
    try:
        compile(source, "<script>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f" on line {exc.lineno}" if exc.lineno else ""
        return f"The script has a syntax error{where}: {(exc.msg or 'invalid syntax').rstrip('.')}."
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"The script cannot be compiled: {str(exc).rstrip('.') or type(exc).__name__}."
    return None


class _Calls:
    """The methods a running script may call, and what they counted."""

    def __init__(
        self,
        params: dict[str, Any],
        limits: ScriptLimits,
        on_row: Callable[[dict[str, Any]], Awaitable[None]],
        on_log: Callable[[str], Awaitable[None]],
        services: ScriptServices,
    ) -> None:
        self._params = params
        self._limits = limits
        self._on_row = on_row
        self._on_log = on_log
        self._services = services
        self.rows = 0
        self.rows_truncated = False

    def methods(self) -> dict[str, Method]:
        table: dict[str, Method] = {
            channel.PARAMS: self._get_params,
            channel.ROW: self._row,
            channel.LOG: self._log,
        }
        for name in channel.SERVICE_CALLS:
            table[name] = self._service_method(name)
        return table

    async def _get_params(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._params

    async def _row(self, args: dict[str, Any]) -> None:
        try:
            fields = channel.check_row(args.get("fields"))
        except channel.ChannelFormatError as exc:
            raise CallRefused(str(exc)) from exc
        if self.rows >= self._limits.max_rows:
            self.rows_truncated = True
            raise CallRefused(row_limit_sentence(self._limits.max_rows))
        self.rows += 1
        await self._on_row(dict(fields))

    async def _log(self, args: dict[str, Any]) -> None:
        message = args.get("message")
        if not isinstance(message, str) or len(message) > channel.MAX_LOG_CHARS:
            raise CallRefused(
                f"A log message is a string of at most {channel.MAX_LOG_CHARS} characters."
            )
        await self._on_log(message)

    def _service_method(self, name: str) -> Method:
        names = channel.SERVICE_CALLS[name]

        async def call(args: dict[str, Any]) -> Any:
            if set(args) != set(names):
                raise CallRefused(f"{name} takes exactly these arguments: {', '.join(names)}.")
            values = [args[arg] for arg in names]
            for arg, value in zip(names, values, strict=True):
                if (
                    not isinstance(value, str)
                    or not 0 < len(value) <= channel.MAX_ARG_CHARS
                    or "\x00" in value
                ):
                    raise CallRefused(
                        f"The {arg} of {name} must be text of 1 to {channel.MAX_ARG_CHARS} characters."
                    )
            return await getattr(self._services, name)(*values)

        return call


def row_limit_sentence(max_rows: int) -> str:
    return f"Row limit of {max_rows} rows reached; further rows dropped."


def _child_env(address: str, secret: str) -> dict[str, str]:
    env = dict(os.environ)
    env[channel.ENV_ADDRESS] = address
    env[channel.ENV_SECRET] = secret
    env[channel.ENV_AGENT_PID] = str(os.getpid())
    # Python programs the script starts stream their output too.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child_argv(script_path: Path) -> list[str]:
    """How to start the script's child on this agent's own interpreter.

    A frozen bundle's executable is not a Python that takes `-c`: it has a script-child mode
    of its own (`tether.agent.entry`), built unbuffered and in UTF-8 mode like the flags below.
    """
    if getattr(sys, "frozen", False):
        return [sys.executable, SCRIPT_CHILD, str(script_path), str(os.getpid())]
    return [
        sys.executable,
        "-I",
        "-u",
        "-X",
        "utf8",
        "-c",
        _BOOTSTRAP,
        _tether_root(),
        str(script_path),
        str(os.getpid()),
    ]


def _tether_root() -> str:
    return str(Path(tether.__file__).resolve().parent.parent)


def _finish_error(
    exit_code: int | None,
    timed_out: bool,
    cancelled: bool,
    budget: script_process.OutputBudget,
    calls: _Calls,
    limits: ScriptLimits,
) -> str | None:
    if timed_out:
        return f"The script ran longer than its time limit of {limits.timeout_seconds:g} seconds and was stopped."
    if cancelled:
        return "The script was cancelled and stopped."
    if budget.truncated:
        return script_process.limit_notice(budget.limit)
    if calls.rows_truncated:
        return row_limit_sentence(limits.max_rows)
    if exit_code is not None and exit_code < 0:
        return f"The script was ended by signal {-exit_code}."
    if exit_code:
        return exit_code_sentence(exit_code)
    return None


def _refused(error: str) -> ScriptOutcome:
    return ScriptOutcome(None, False, False, False, False, error)


async def run_script(
    source: str,
    params: Mapping[str, Any],
    limits: ScriptLimits,
    *,
    on_output: Callable[[Literal["stdout", "stderr"], str], Awaitable[None]],
    on_row: Callable[[dict[str, Any]], Awaitable[None]],
    on_log: Callable[[str], Awaitable[None]],
    services: ScriptServices,
    cancel: asyncio.Event | None = None,
    workdir: Path | None = None,
    recorder: ProcessRecorder | None = None,
) -> ScriptOutcome:
    """Run `source` in a child Python process and report how it ended.

    Output is passed to `on_output` as it arrives; rows and log lines the script sends through
    `tether.script` go to `on_row` and `on_log`; upload and download go to `services`. The time
    limit, the `cancel` event and cancelling this coroutine all kill the script's whole process
    tree; when the script exits by itself, whatever it left running in its process group is
    killed too. Only a process the script deliberately started in a session of its own (a
    service it launches) outlives a clean run; the run still returns within DRAIN_SECONDS even if
    that process holds the output pipes. The script's working directory is
    `workdir`, or the run's private directory (removed afterwards). An exception raised by
    `on_output` stops the script and propagates. The child runs the script only after
    `recorder.started` returned, and dies with the agent process (docs/adr/0031).
    """
    error = syntax_error(source)
    if error is not None:
        return _refused(error)
    try:
        params_json = channel.encode({"id": 0, "result": dict(params)})
    except (TypeError, ValueError) as exc:
        return _refused(f"The script parameters cannot be sent as JSON: {exc}.")
    if len(params_json) > channel.MAX_LINE_BYTES:
        return _refused(f"The script parameters are larger than {channel.MAX_LINE_BYTES} bytes.")
    if cancel is not None and cancel.is_set():
        return ScriptOutcome(
            None, False, True, False, False, "The script was cancelled before it started."
        )

    private_dir = Path(tempfile.mkdtemp(prefix="tether-script-"))  # mode 0700
    calls = _Calls(dict(params), limits, on_row, on_log, services)
    secret = secrets.token_hex(32)
    server = ChannelServer(secret, calls.methods())
    background: list[asyncio.Task[Any]] = []
    process: asyncio.subprocess.Process | None = None
    tree: script_process.ProcessTree | None = None
    contained: Any = None
    try:
        script_path = private_dir / "script.py"
        # O_BINARY: on Windows a text-mode descriptor would turn the "\r\n" Python's own
        # text layer writes into "\r\r\n".
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(script_path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(source)
        address = await server.start(private_dir)
        argv = _child_argv(script_path)
        try:
            process = await script_process.spawn(
                argv, _child_env(address, secret), workdir or private_dir
            )
        except OSError as exc:
            return _refused(
                f"The agent could not start Python for the script: {exc.strerror or exc}."
            )
        tree = script_process.ProcessTree(process.pid)
        try:
            if recorder is not None:
                recorder.started(script_process.describe(process.pid))
            contained = job_object.contain(process.pid)
        except (psutil.Error, OSError, sqlite3.Error) as exc:
            # Killed in `finally` before it was ever told to start.
            return _refused(
                "The agent could not record the script's process, so it did not run it: "
                f"{str(exc).rstrip('.') or type(exc).__name__}."
            )
        with contextlib.suppress(ConnectionError):
            # A child that is already gone reports through its exit code below.
            await script_process.let_start(process)
        background.append(
            asyncio.create_task(tree.track(recorder.descendants if recorder else None))
        )
        budget = script_process.OutputBudget(limits.max_output_bytes)
        if process.stdout is None or process.stderr is None:
            raise RuntimeError("The script process was started without output pipes.")
        pumps = [
            asyncio.create_task(
                script_process.pump_output(process.stdout, "stdout", budget, on_output)
            ),
            asyncio.create_task(
                script_process.pump_output(process.stderr, "stderr", budget, on_output)
            ),
        ]
        background += pumps
        timed_out, cancelled = await _wait(
            process, pumps, limits.timeout_seconds, cancel, background
        )
        if timed_out or cancelled:
            tree.kill_all()
        else:
            tree.kill_group()
        exit_code = await script_process.exit_code(process)
        if recorder is not None:
            recorder.exited(exit_code)
        done, _ = await asyncio.wait(pumps, timeout=DRAIN_SECONDS)
        for pump in done:
            if pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
        return ScriptOutcome(
            exit_code=exit_code,
            timed_out=timed_out,
            cancelled=cancelled,
            output_truncated=budget.truncated,
            rows_truncated=calls.rows_truncated,
            error=_finish_error(exit_code, timed_out, cancelled, budget, calls, limits),
        )
    finally:
        if process is not None and process.returncode is None and tree is not None:
            tree.kill_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(script_process.exit_code(process), 5.0)
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(BaseException):
                await task
        if process is not None:
            script_process.close_pipes(process)
        job_object.release(contained)
        await server.close()
        shutil.rmtree(private_dir, ignore_errors=True)


async def _wait(
    process: asyncio.subprocess.Process,
    pumps: list[asyncio.Task[None]],
    timeout: float,
    cancel: asyncio.Event | None,
    background: list[asyncio.Task[Any]],
) -> tuple[bool, bool]:
    """Wait for the process to exit; (timed out, cancelled). A failing pump raises."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    exited = asyncio.create_task(script_process.exit_code(process))
    background.append(exited)
    pending: set[asyncio.Future[Any]] = {exited, *pumps}
    stopper: asyncio.Task[Any] | None = None
    if cancel is not None:
        stopper = asyncio.create_task(cancel.wait())
        background.append(stopper)
        pending.add(stopper)
    while not exited.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True, False
        done, pending = await asyncio.wait(
            pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task in pumps and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if stopper is not None and stopper in done:
            return False, True
    return False, False
