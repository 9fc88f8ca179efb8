"""The helper module investigation scripts import: parameters, rows, files, processes, isolation.

A script run by a Tether agent talks to that agent over a local channel authenticated with a
per-run secret; everything here is synchronous, so scripts stay plain Python::

    from tether.script import params, row, upload

    for path in params["paths"]:
        info = upload(path)
        row(path=path, sha256=info["sha256"])

Outside an agent every call raises ScriptError. Processes are read and killed with psutil in the
script's own process (with the agent's privileges), never through the agent.
"""

import contextlib
import os
import time
from typing import Any

import psutil

from tether.script import channel, client
from tether.script.client import ScriptError

__all__ = [
    "ScriptError",
    "download",
    "isolate",
    "isolation_status",
    "kill",
    "log",
    "params",  # loaded from the agent on first use, see __getattr__
    "processes",
    "row",
    "unisolate",
    "upload",
]

# Tracebacks in a script's output name it where scripts import it from.
ScriptError.__module__ = __name__

_params: dict[str, Any] | None = None


def __getattr__(name: str) -> Any:
    # `params` is fetched from the agent the first time a script reads it, so importing this
    # module costs no round trip and works (until used) outside an agent.
    global _params
    if name == "params":
        if _params is None:
            result = client.call(channel.PARAMS, {})
            if not isinstance(result, dict):
                raise ScriptError("The agent sent parameters that are not an object.")
            _params = result
        return _params
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def row(**fields: Any) -> None:
    """Emit one structured result row: field names to strings, numbers, booleans or None."""
    try:
        checked = channel.check_row(fields)
    except channel.ChannelFormatError as exc:
        raise ScriptError(str(exc)) from exc
    client.call(channel.ROW, {"fields": checked})


def log(message: str) -> None:
    """Send one log line to the analyst, apart from stdout and stderr."""
    text = str(message)
    if len(text) > channel.MAX_LOG_CHARS:
        text = text[: channel.MAX_LOG_CHARS]
    client.call(channel.LOG, {"message": text})


def _path_arg(path: str | os.PathLike[str]) -> str:
    # The agent's working directory is not the script's: send absolute paths only.
    return os.path.abspath(os.fspath(path))


def upload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Send a file from this endpoint to the platform; returns {"sha256", "size", "path"}."""
    result = client.call("upload", {"path": _path_arg(path)})
    return dict(result) if isinstance(result, dict) else {}


def download(name: str, dest: str | os.PathLike[str]) -> dict[str, Any]:
    """Fetch the platform library file `name` to `dest` on this endpoint; returns its details."""
    result = client.call("download", {"name": str(name), "dest": _path_arg(dest)})
    return dict(result) if isinstance(result, dict) else {}


def isolate(mode: str = "outbound") -> dict[str, Any]:
    """Isolate this endpoint: `outbound` blocks outbound traffic except to the platform and the
    platform's allowlist, keeping inbound; `full` blocks new inbound connections too.

    Rolled back (and ScriptError raised) when the platform is unreachable through the new rules.
    Returns the isolation status: {"isolated", "mode", "since", "backend", "platform", "allow"}.
    """
    return _dict(client.call("isolate", {"mode": str(mode)}))


def unisolate() -> dict[str, Any]:
    """Release this endpoint from isolation; returns the isolation status."""
    return _dict(client.call("unisolate", {}))


def isolation_status() -> dict[str, Any]:
    """What this endpoint's firewall holds for isolation, changing nothing."""
    return _dict(client.call("isolation_status", {}))


def _dict(result: Any) -> dict[str, Any]:
    return dict(result) if isinstance(result, dict) else {}


_PROCESS_FIELDS = ["pid", "ppid", "name", "username", "cmdline", "exe", "create_time"]


def processes() -> list[dict[str, Any]]:
    """Every process on the endpoint: pid, ppid, name, username, cmdline, exe, create_time.

    Fields the operating system will not reveal are None.
    """
    found = []
    for process in psutil.process_iter(_PROCESS_FIELDS, ad_value=None):
        info = dict(process.info)
        found.append({field: info.get(field) for field in _PROCESS_FIELDS})
    return found


def _protected_pids() -> set[int]:
    protected = {0, 1, os.getpid()}
    agent = client.agent_pid()
    if agent is not None:
        protected.add(agent)
    return protected


def kill(pid: int, tree: bool = False) -> list[int]:
    """Kill process `pid` (and with `tree`, all its descendants); returns the pids killed.

    The agent, this script and process 1 are never killed; asking to is a ScriptError.
    """
    protected = _protected_pids()
    if pid in protected:
        raise ScriptError(
            f"Process {pid} is the agent, this script or the system's first process; it is not killed."
        )
    try:
        target = psutil.Process(pid)
        victims = [target]
        if tree:
            victims += [
                child for child in target.children(recursive=True) if child.pid not in protected
            ]
    except psutil.NoSuchProcess as exc:
        raise ScriptError(f"No process with id {pid} is running.") from exc
    except psutil.AccessDenied as exc:
        raise ScriptError(f"Not allowed to look at process {pid}.") from exc
    killed = []
    # The parent first, so it cannot start a replacement for a child it has just lost.
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied as exc:
            raise ScriptError(f"Not allowed to kill process {victim.pid}.") from exc
        killed.append(victim.pid)
    _wait_exited([victim for victim in victims if victim.pid in killed])
    return sorted(killed)


def _exited(process: psutil.Process) -> bool:
    try:
        process.wait(timeout=0)  # reaps it when it is this script's own child
        return True
    except psutil.TimeoutExpired:
        pass
    except psutil.NoSuchProcess:
        return True
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    # It died between the two looks. Reap it if it is this script's own child; someone else's
    # child stays a zombie until its parent reaps it, and is dead all the same.
    with contextlib.suppress(psutil.TimeoutExpired, psutil.NoSuchProcess):
        process.wait(timeout=0)
    return True


def _wait_exited(processes: list[psutil.Process], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    pending = processes
    while pending and time.monotonic() < deadline:
        pending = [process for process in pending if not _exited(process)]
        if pending:
            time.sleep(0.01)
