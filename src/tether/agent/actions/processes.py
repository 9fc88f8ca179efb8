"""The process actions: list the endpoint's processes, kill a process or a process tree.

psutil does the reading on Windows and POSIX alike. A process that ends or refuses access while
it is read is skipped or listed with nulls: a listing never fails because one process changed.
The blocking work runs in a worker thread so the agent's connection keeps serving.
"""

import contextlib
import ntpath
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psutil

from tether.agent.action import ResultBudget, run_blocking
from tether.agent.errors import ActionError
from tether.agent.hashing import NotRegularFile, Stopped, digest, open_regular_file
from tether.agent.windows_tools import system_directory
from tether.protocol import (
    MAX_COMMAND_LINE,
    MAX_PATH,
    MAX_PROCESSES,
    MAX_RESULT_BYTES,
    HashUnavailable,
    KilledProcess,
    KillOutcome,
    ProcessInfo,
    ProcessKillArgs,
    ProcessKillResult,
    ProcessList,
    ProcessListArgs,
    safe_text,
)

_ATTRS = ["pid", "ppid", "name", "username", "cmdline", "create_time", "exe"]
_NAME_CHARS = 1024
# How long a kill waits for its processes to end before reporting them as survivors.
KILL_WAIT_SECONDS = 3.0
_POLL_SECONDS = 0.05
# A tree whose processes keep forking is re-read this many times while it is being stopped.
_FREEZE_ROUNDS = 5


class _ExecutableHashes:
    """SHA-256 of executables for one listing: each distinct file is read once."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._known: dict[tuple[str, int, int, int, int], str] = {}
        self._stop = stop

    def of(self, pid: int, executable: str | None) -> tuple[str | None, HashUnavailable | None]:
        """The digest of the file process `pid` runs, or None and why there is none."""
        if not executable:
            return None, "no executable"
        # On Linux the kernel's link opens the very file the process runs, even when it has
        # been deleted or replaced on disk since, as malware likes to do.
        source = f"/proc/{pid}/exe" if sys.platform == "linux" else executable
        try:
            file, status = open_regular_file(source)
        except NotRegularFile:
            return None, "not a regular file"
        except FileNotFoundError:
            return None, "not found"
        except PermissionError:
            return None, "access denied"
        except OSError:
            return None, "read failed"
        with file:
            key = (executable, status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
            known = self._known.get(key)
            if known is not None:
                return known, None
            try:
                digests, _ = digest(file, ["sha256"], self._stop)
            except OSError:
                return None, "read failed"
        self._known[key] = digests["sha256"]
        return digests["sha256"], None


def _matches(info: dict[str, Any], args: ProcessListArgs) -> bool:
    if args.pid is not None and info["pid"] != args.pid:
        return False
    if args.name is not None and args.name.casefold() not in (info["name"] or "").casefold():
        return False
    if args.user is not None:
        user = (info["username"] or "").casefold()
        wanted = args.user.casefold()
        # Windows names owners DOMAIN\user; either form finds them.
        if wanted not in (user, user.rsplit("\\", 1)[-1]):
            return False
    return True


def _started(create_time: float | None) -> datetime | None:
    if create_time is None:
        return None
    try:
        return datetime.fromtimestamp(create_time, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _describe(info: dict[str, Any], hashes: _ExecutableHashes | None) -> ProcessInfo:
    cmdline: list[str] | None = info["cmdline"]
    executable: str | None = info["exe"] or None
    sha256, unavailable = hashes.of(info["pid"], executable) if hashes else (None, None)
    return ProcessInfo(
        pid=info["pid"],
        ppid=info["ppid"],
        name=safe_text(info["name"], _NAME_CHARS) if info["name"] else None,
        user=safe_text(info["username"], 256) if info["username"] else None,
        command_line=safe_text(" ".join(cmdline), MAX_COMMAND_LINE)
        if cmdline is not None
        else None,
        started=_started(info["create_time"]),
        executable=safe_text(executable, MAX_PATH) if executable else None,
        sha256=sha256,
        hash_unavailable=unavailable,
    )


def collect_processes(
    args: ProcessListArgs,
    budget_bytes: int = MAX_RESULT_BYTES,
    max_entries: int = MAX_PROCESSES,
    stop: threading.Event | None = None,
) -> ProcessList:
    """The processes matching `args`, by pid, within `max_entries` and `budget_bytes`. Blocking.

    Raises Stopped once `stop` is set (the job was cancelled or timed out).
    """
    # process_iter skips processes that end while they are read; ad_value nulls what is refused.
    matched = [
        proc.info
        for proc in psutil.process_iter(_ATTRS, ad_value=None)
        if _matches(proc.info, args)
    ]
    matched.sort(key=lambda info: int(info["pid"]))
    hashes = _ExecutableHashes(stop) if args.hashes else None
    budget = ResultBudget(budget_bytes)
    listed: list[ProcessInfo] = []
    truncated = False
    for info in matched:
        if stop is not None and stop.is_set():
            raise Stopped
        if len(listed) == max_entries:
            truncated = True
            break
        entry = _describe(info, hashes)
        if not budget.fits(entry):
            truncated = True
            break
        listed.append(entry)
    return ProcessList(processes=listed, truncated=truncated)


# Windows processes whose end stops the machine (bugcheck CRITICAL_PROCESS_DIED) or its logon,
# by image name in System32. A copy of one of these names elsewhere (malware calls itself
# lsass.exe in a temp folder) is not protected.
WINDOWS_CRITICAL_IMAGES = frozenset(
    {"lsass.exe", "csrss.exe", "wininit.exe", "smss.exe", "services.exe", "winlogon.exe"}
)
# Kernel-side processes with no image file: pid 0 (Idle), 4 (System) and their siblings.
WINDOWS_KERNEL_PROCESSES = frozenset({"system", "registry", "memory compression", "secure system"})
# Linux: the kernel's thread creator; every kernel thread is it or its child.
KTHREADD_PID = 2


def windows_refusal(
    pid: int, name: str | None, exe: str | None, marked_critical: bool, system_dir: str
) -> str | None:
    """Why the agent will not kill Windows process `pid`, or None.

    `exe` is its image path (None when unreadable), `marked_critical` what IsProcessCritical
    says. An unreadable image with a critical name is refused: the real one is likelier.
    """
    if pid in (0, 4):
        return f"Process {pid} is the Windows System process, which the agent never kills."
    who = f"Process {pid} ({name})" if name else f"Process {pid}"
    if marked_critical:
        return (
            f"{who} is marked critical by Windows, which stops the machine when it ends, so the "
            "agent never kills it."
        )
    lowered = (name or "").lower()
    in_system_dir = exe is None or ntpath.normcase(exe) == ntpath.normcase(
        ntpath.join(system_dir, lowered)
    )
    if lowered in WINDOWS_CRITICAL_IMAGES and in_system_dir:
        return (
            f"{who} is a Windows system process whose end stops the machine or its logon, so "
            "the agent never kills it."
        )
    if lowered in WINDOWS_KERNEL_PROCESSES and exe is None:
        return f"{who} is part of the Windows kernel, which the agent never kills."
    return None


def linux_refusal(pid: int, ppid: int | None, has_command_line: bool = True) -> str | None:
    """Why the agent will not kill Linux process `pid` (with parent `ppid`), or None.

    A kernel thread is kthreadd (pid 2) or its child, and has no command line; in a container
    pid 2 can be an ordinary process, which has one.
    """
    if pid == 1:
        return "Process 1 is the endpoint's init process, which the agent never kills."
    if not has_command_line and KTHREADD_PID in (pid, ppid):
        return f"Process {pid} is a kernel thread, which the agent never kills."
    return None


def _windows_critical(pid: int) -> bool:
    """IsProcessCritical (Windows 8.1 and later); False where it cannot be asked."""
    if sys.platform != "win32":
        return False
    import ctypes
    from ctypes import wintypes

    kernel = ctypes.WinDLL("kernel32", use_last_error=True)
    query_limited_information = 0x1000
    handle = kernel.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return False
    try:
        critical = wintypes.BOOL()
        if not kernel.IsProcessCritical(wintypes.HANDLE(handle), ctypes.byref(critical)):
            return False
        return bool(critical.value)
    finally:
        kernel.CloseHandle(wintypes.HANDLE(handle))


def system_directory_text() -> str:
    return str(system_directory())


def _system_refusal(pid: int) -> str | None:
    """The operating system's own processes: init and kernel threads, or Windows' critical ones."""
    if sys.platform == "win32" and pid in (0, 4):
        return windows_refusal(pid, None, None, False, "")
    if sys.platform != "win32" and pid == 1:
        return linux_refusal(pid, None)
    try:
        proc = psutil.Process(pid)
        if sys.platform != "win32":
            return linux_refusal(pid, proc.ppid(), bool(proc.cmdline()))
        try:
            exe: str | None = proc.exe() or None
        except psutil.AccessDenied:
            exe = None
        return windows_refusal(
            pid, _name(proc), exe, _windows_critical(pid), system_directory_text()
        )
    except psutil.NoSuchProcess:
        return None  # the kill reports the missing pid
    except psutil.Error:
        return None


def _refusal(pid: int) -> str | None:
    """Why the agent will not kill `pid`, or None: never the system's own processes, itself
    or what started it."""
    system = _system_refusal(pid)
    if system is not None:
        return system
    if pid == os.getpid():
        return f"Process {pid} is this agent itself; stop the agent through its service manager instead."
    try:
        ancestors = {parent.pid for parent in psutil.Process().parents()}
    except psutil.Error:
        ancestors = set()
    if pid in ancestors:
        return f"Process {pid} is an ancestor of this agent, which the agent never kills."
    return None


def _name(proc: psutil.Process) -> str | None:
    try:
        return safe_text(proc.name(), _NAME_CHARS) or None
    except psutil.Error:
        return None


def _suspend(proc: psutil.Process) -> None:
    # Gone already, or refused: the kill reports it.
    with contextlib.suppress(psutil.Error):
        proc.suspend()


def _stop_tree(target: psutil.Process) -> list[psutil.Process]:
    """The descendants of `target`, all stopped so that none forks a child the kill would miss.

    The target is stopped first, then its descendants as they are found; the tree is re-read
    until no new process appears, since one may have forked before it was stopped. A system
    process in the tree (a critical Windows process, a kernel thread) is never stopped: then
    everything stopped so far is resumed and the kill refused.
    """
    _suspend(target)
    found: dict[int, psutil.Process] = {}
    for _ in range(_FREEZE_ROUNDS):
        try:
            children = target.children(recursive=True)
        except psutil.Error:
            break
        new = [child for child in children if child.pid not in found]
        if not new:
            break
        for child in new:
            refusal = _system_refusal(child.pid)
            if refusal is not None:
                for stopped in (target, *found.values()):
                    with contextlib.suppress(psutil.Error):
                        stopped.resume()
                raise ActionError(
                    f"Nothing was killed: the tree of process {target.pid} holds a process "
                    f"the agent never kills. {refusal}"
                )
            found[child.pid] = child
            _suspend(child)
    return list(found.values())


def _ended(proc: psutil.Process) -> bool:
    try:
        # A zombie has ended: it only waits for its parent to collect its exit status.
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _send_kill(proc: psutil.Process) -> KillOutcome | None:
    """Kill `proc`: None while its end is awaited, or the outcome already known."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "gone"
        proc.kill()
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.AccessDenied:
        return "denied"
    return None


def _describe_failure(
    pid: int, name: str | None, outcome: KillOutcome, waited: float, descendants: list[KillOutcome]
) -> str:
    who = f"process {pid} ({name})" if name else f"process {pid}"
    killed = descendants.count("killed") + descendants.count("gone")
    rest = f"; {killed} of its {len(descendants)} descendants ended" if descendants else ""
    if outcome == "denied":
        return f"The endpoint denied the agent killing {who}{rest}."
    return f"The agent sent {who} a kill signal but it still runs after {waited:g} seconds{rest}."


def kill_process(
    pid: int,
    tree: bool,
    wait_seconds: float = KILL_WAIT_SECONDS,
    budget_bytes: int = MAX_RESULT_BYTES,
) -> ProcessKillResult:
    """Kill process `pid` and, with `tree`, all its descendants; wait for them to end. Blocking.

    Raises ActionError for a protected or missing pid, and when the target itself survives.
    """
    refusal = _refusal(pid)
    if refusal is not None:
        raise ActionError(refusal)
    try:
        target = psutil.Process(pid)
    except psutil.NoSuchProcess as exc:
        raise ActionError(f"No process has the pid {pid} on this endpoint.") from exc
    victims = [target, *(_stop_tree(target) if tree else [])]
    names = {proc.pid: _name(proc) for proc in victims}
    outcomes: dict[int, KillOutcome | None] = {proc.pid: _send_kill(proc) for proc in victims}
    deadline = time.monotonic() + wait_seconds
    while True:
        for proc in victims:
            if outcomes[proc.pid] is None and _ended(proc):
                outcomes[proc.pid] = "killed"
        if all(outcome is not None for outcome in outcomes.values()):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_SECONDS)
    final: dict[int, KillOutcome] = {
        proc_pid: outcome or "survived" for proc_pid, outcome in outcomes.items()
    }
    for proc in victims:
        if final[proc.pid] in ("denied", "survived"):
            # Stopped for the kill but not killed: left running as it was found.
            with contextlib.suppress(psutil.Error):
                proc.resume()
    if final[pid] in ("denied", "survived"):
        descendants = [final[proc.pid] for proc in victims[1:]]
        raise ActionError(_describe_failure(pid, names[pid], final[pid], wait_seconds, descendants))
    budget = ResultBudget(budget_bytes)
    reported: list[KilledProcess] = []
    truncated = False
    for proc in victims:
        entry = KilledProcess(pid=proc.pid, name=names[proc.pid], outcome=final[proc.pid])
        # The target is always reported; a descendant only while the budget lasts.
        if not budget.fits(entry) and reported:
            truncated = True
            break
        reported.append(entry)
    return ProcessKillResult(pid=pid, processes=reported, truncated=truncated)


async def list_processes(args: ProcessListArgs) -> ProcessList:
    """Handler of `processes.list`."""
    return await run_blocking(lambda stop: collect_processes(args, stop=stop))


async def kill_processes(args: ProcessKillArgs) -> ProcessKillResult:
    """Handler of `processes.kill`."""
    # Not stoppable: a kill half done is worse than one that finishes its short wait.
    return await run_blocking(lambda stop: kill_process(args.pid, args.tree))
