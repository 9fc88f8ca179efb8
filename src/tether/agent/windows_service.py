"""The agent as a Windows service: installed and removed by the agent, run under the SCM.

`tether agent service install` registers the service "TetherAgent" with `sc.exe` (by its full
path): LocalSystem, automatic start, the command line quoted (no unquoted-path hijack), and
recovery actions for a crash (restart after 5 s, 30 s, then every 5 minutes; the count resets
after a day). A refusal that no restart cures (revoked or unknown certificate, refused state
directory: exit status 78 on Linux) is reported to the SCM as a stop with service-specific
code 78, not as a crash, so the recovery actions do not run and a revoked agent stays stopped
(`sc query TetherAgent` shows the code). The failure-actions flag stays off for that reason.

`tether agent service run` is what the SCM starts: it hands the SCM a ServiceMain through
`StartServiceCtrlDispatcherW` (ctypes, no pywin32: the agent bundle ships only what it imports,
and the four calls are small) and runs the agent until a stop or shutdown control, on which the
agent tells the platform what its isolation is (a local release before removal is audited
there) and ends.

`tether agent service remove` releases isolation first (while the service still runs and can
report it), then stops and deletes the service. Nothing here has run on Windows (no Windows
machine here): the command lines and the stop logic are unit-tested; the checklist in
docs/operations.md says what a first Windows VM must show (docs/adr/0041).
"""

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Protocol

from tether.agent.errors import AgentRefused
from tether.agent.state_guard import UnsafeStateDir
from tether.agent.windows_tools import decode_native, system_program

SERVICE_NAME = "TetherAgent"
DISPLAY_NAME = "Tether agent"
DESCRIPTION = (
    "Tether live-response agent: keeps this endpoint connected to its Tether platform "
    "for the incident responders."
)
# Crash recovery: restart after 5 s, 30 s, then every 5 minutes; count reset after a day.
RECOVERY_ACTIONS = "restart/5000/restart/30000/restart/300000"
RECOVERY_RESET_SECONDS = 86400
# tether.agent.commands.EXIT_REFUSED: reconnecting cannot help.
EXIT_REFUSED = 78
# winerror.h
ERROR_SERVICE_SPECIFIC_ERROR = 1066
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062
# How long `remove` waits for the running agent to report and stop.
STOP_WAIT_SECONDS = 60.0


class ServiceError(Exception):
    """Installing or removing the service failed; the message is the operator's sentence."""


def sc_exe() -> str:
    return system_program("sc.exe")


def service_command_line(python: str, state_dir: PurePath, *, frozen: bool | None = None) -> str:
    """The service's command line, every part quoted as Windows parses it (a path with a space
    left unquoted would let `C:\\Program.exe` run as SYSTEM).

    In the agent bundle `python` is `tether-agent.exe`, which takes the agent's commands
    directly and no `-m` (docs/adr/0042); `frozen` defaults to whether this process is one.
    """
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    command = ["service", "run"] if frozen else ["-m", "tether", "agent", "service", "run"]
    argv = [python, *command, "--state-dir", str(state_dir)]
    return subprocess.list2cmdline(argv)


def install_commands(python: str, state_dir: PurePath) -> list[list[str]]:
    """The sc.exe calls that register the service, in order."""
    sc = sc_exe()
    return [
        [
            sc,
            "create",
            SERVICE_NAME,
            "binPath=",
            service_command_line(python, state_dir),
            "start=",
            "auto",
            "obj=",
            "LocalSystem",
            "DisplayName=",
            DISPLAY_NAME,
        ],
        [sc, "description", SERVICE_NAME, DESCRIPTION],
        [
            sc,
            "failure",
            SERVICE_NAME,
            "reset=",
            str(RECOVERY_RESET_SECONDS),
            "actions=",
            RECOVERY_ACTIONS,
        ],
        # Recovery on crashes only: a reported stop with an exit code (a revoked agent) is final.
        [sc, "failureflag", SERVICE_NAME, "0"],
        [sc, "start", SERVICE_NAME],
    ]


def stop_command() -> list[str]:
    return [sc_exe(), "stop", SERVICE_NAME]


def query_command() -> list[str]:
    return [sc_exe(), "query", SERVICE_NAME]


def delete_command() -> list[str]:
    return [sc_exe(), "delete", SERVICE_NAME]


def exit_status(code: int) -> tuple[int, int]:
    """(dwWin32ExitCode, dwServiceSpecificExitCode) reported to the SCM for exit `code`."""
    if code == 0:
        return 0, 0
    return ERROR_SERVICE_SPECIFIC_ERROR, code


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    output: str


Runner = Callable[[Sequence[str]], ToolResult]


def run_tool(argv: Sequence[str]) -> ToolResult:
    """Run a native tool by full path; its output decoded from the OEM code page."""
    done = subprocess.run(list(argv), capture_output=True, check=False, timeout=120)
    return ToolResult(done.returncode, decode_native(done.stdout + done.stderr).strip())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else "no message"


def install(python: str, state_dir: PurePath, run: Runner = run_tool) -> None:
    """Register and start the service; ServiceError (with sc.exe's words) when refused, after
    deleting a half-registered service."""
    commands = install_commands(python, state_dir)
    for n, argv in enumerate(commands):
        result = run(argv)
        if result.returncode != 0:
            if n > 0:
                run(delete_command())  # nothing is left half-installed
            raise ServiceError(
                f"Windows refused to {argv[1]} the {SERVICE_NAME} service: "
                f"{_last_line(result.output)}."
            )


async def remove(
    release: Callable[[], Awaitable[object]],
    run: Runner = run_tool,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    wait_seconds: float = STOP_WAIT_SECONDS,
) -> None:
    """Release isolation, then stop and delete the service.

    The release comes first, while the service still runs: it reads the released state and
    reports it to the platform as it stops (audited there as a local release). A release the
    firewall refuses stops the removal with the service still installed.
    """
    await release()
    stopped = run(stop_command())
    if stopped.returncode not in (0, ERROR_SERVICE_NOT_ACTIVE, ERROR_SERVICE_DOES_NOT_EXIST):
        raise ServiceError(
            f"Windows refused to stop the {SERVICE_NAME} service: {_last_line(stopped.output)}."
        )
    if stopped.returncode == ERROR_SERVICE_DOES_NOT_EXIST:
        raise ServiceError(f"The {SERVICE_NAME} service is not installed on this endpoint.")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while "STOPPED" not in run(query_command()).output:
        if loop.time() >= deadline:
            raise ServiceError(
                f"The {SERVICE_NAME} service did not stop within {wait_seconds:g} s; "
                "it was not removed."
            )
        await sleep(1.0)
    deleted = run(delete_command())
    if deleted.returncode != 0:
        raise ServiceError(
            f"Windows refused to delete the {SERVICE_NAME} service: {_last_line(deleted.output)}."
        )


class ServiceAgent(Protocol):
    """What the service runs (tether.agent.connection.AgentConnection), as far as it goes."""

    async def run_forever(self) -> None: ...

    async def report_isolation(self) -> None: ...


async def serve(agent: ServiceAgent, stop: asyncio.Event) -> int:
    """Run `agent` (run_forever, report_isolation) until it ends or `stop` is set; the exit code.

    On a stop the agent first tells the platform what its isolation is now (a release made by
    `service remove` is reported, and audited there), then its connection ends. A refusal
    that no restart cures returns EXIT_REFUSED; any other error propagates, so the process
    dies and the SCM's recovery actions restart it.
    """
    running = asyncio.create_task(agent.run_forever())
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running in done:
            try:
                running.result()
            except (AgentRefused, UnsafeStateDir):
                return EXIT_REFUSED
            return 0
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent.report_isolation(), 10.0)
        return 0
    finally:
        for task in (running, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


if sys.platform == "win32":  # pragma: no cover - runs under the Windows SCM only
    import ctypes
    import logging
    import os
    import threading
    from ctypes import wintypes

    _advapi = ctypes.WinDLL("advapi32", use_last_error=True)
    _SERVICE_WIN32_OWN_PROCESS = 0x10
    _SERVICE_STOPPED, _SERVICE_START_PENDING, _SERVICE_STOP_PENDING, _SERVICE_RUNNING = 1, 2, 3, 4
    _SERVICE_ACCEPT_STOP, _SERVICE_ACCEPT_SHUTDOWN = 0x1, 0x4
    _SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN, _SERVICE_CONTROL_INTERROGATE = 1, 5, 4
    _NO_ERROR, _ERROR_CALL_NOT_IMPLEMENTED = 0, 120

    class _ServiceStatus(ctypes.Structure):
        _fields_ = [
            ("dwServiceType", wintypes.DWORD),
            ("dwCurrentState", wintypes.DWORD),
            ("dwControlsAccepted", wintypes.DWORD),
            ("dwWin32ExitCode", wintypes.DWORD),
            ("dwServiceSpecificExitCode", wintypes.DWORD),
            ("dwCheckPoint", wintypes.DWORD),
            ("dwWaitHint", wintypes.DWORD),
        ]

    _ServiceMain = ctypes.WINFUNCTYPE(None, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR))
    _HandlerEx = ctypes.WINFUNCTYPE(
        wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID, wintypes.LPVOID
    )

    class _TableEntry(ctypes.Structure):
        _fields_ = [("lpServiceName", wintypes.LPWSTR), ("lpServiceProc", _ServiceMain)]

    _advapi.StartServiceCtrlDispatcherW.restype = wintypes.BOOL
    _advapi.StartServiceCtrlDispatcherW.argtypes = [ctypes.POINTER(_TableEntry)]
    _advapi.RegisterServiceCtrlHandlerExW.restype = wintypes.HANDLE
    _advapi.RegisterServiceCtrlHandlerExW.argtypes = [wintypes.LPCWSTR, _HandlerEx, wintypes.LPVOID]
    _advapi.SetServiceStatus.restype = wintypes.BOOL
    _advapi.SetServiceStatus.argtypes = [wintypes.HANDLE, ctypes.POINTER(_ServiceStatus)]

    def run_as_service(make_agent: Callable[[], ServiceAgent]) -> None:
        """Hand the SCM this process's ServiceMain; returns when the service has stopped."""
        keep: list[Any] = []  # the callbacks must outlive the dispatcher

        def service_main(argc: int, argv: Any) -> None:
            loop = asyncio.new_event_loop()
            stop = asyncio.Event()
            state = _ServiceStatus(
                _SERVICE_WIN32_OWN_PROCESS, _SERVICE_START_PENDING, 0, 0, 0, 0, 3000
            )
            lock = threading.Lock()

            def report(current: int, code: int = 0) -> None:
                with lock:
                    state.dwCurrentState = current
                    accepting = current == _SERVICE_RUNNING
                    state.dwControlsAccepted = (
                        _SERVICE_ACCEPT_STOP | _SERVICE_ACCEPT_SHUTDOWN if accepting else 0
                    )
                    state.dwWin32ExitCode, state.dwServiceSpecificExitCode = exit_status(code)
                    state.dwCheckPoint = state.dwCheckPoint + 1 if current in (2, 3) else 0
                    _advapi.SetServiceStatus(handle, ctypes.byref(state))

            def handler(control: int, event: int, data: Any, context: Any) -> int:
                if control in (_SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN):
                    report(_SERVICE_STOP_PENDING)
                    loop.call_soon_threadsafe(stop.set)
                    return _NO_ERROR
                if control == _SERVICE_CONTROL_INTERROGATE:
                    return _NO_ERROR
                return _ERROR_CALL_NOT_IMPLEMENTED

            callback = _HandlerEx(handler)
            keep.append(callback)
            handle = _advapi.RegisterServiceCtrlHandlerExW(SERVICE_NAME, callback, None)
            if not handle:
                return
            try:
                agent = make_agent()
            except Exception:
                # A refused or missing state directory: nothing is written into it, so the
                # reason is for `tether agent run` in a console to show; a restart cannot help.
                logging.getLogger("tether.agent").exception("The agent service cannot start")
                report(_SERVICE_STOPPED, EXIT_REFUSED)
                return
            report(_SERVICE_RUNNING)
            try:
                code = loop.run_until_complete(serve(agent, stop))
            except BaseException:
                # ctypes would print and swallow an exception leaving a callback, and the SCM
                # would show a running service with no agent in it. Ending the process
                # unreported is a crash, which the recovery actions restart.
                logging.getLogger("tether.agent").exception("The agent service failed")
                logging.shutdown()
                os._exit(1)
            loop.close()
            report(_SERVICE_STOPPED, code)

        main = _ServiceMain(service_main)
        keep.append(main)
        table = (_TableEntry * 2)(
            _TableEntry(SERVICE_NAME, main), _TableEntry(None, _ServiceMain())
        )
        if not _advapi.StartServiceCtrlDispatcherW(table):
            code = ctypes.get_last_error()
            raise ServiceError(
                f"tether agent service run is started by the Windows service manager, not by "
                f"hand (Windows error {code}); use 'tether agent run' in a console."
            )

else:

    def run_as_service(make_agent: Callable[[], ServiceAgent]) -> None:
        """Not Windows: services there are systemd's (packaging/tether-agent.service)."""
        raise ServiceError("Windows services exist on Windows only; on Linux use systemd.")
