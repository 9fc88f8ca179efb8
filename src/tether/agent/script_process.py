"""The child process of a script run: starting it, streaming its output, killing its whole tree.

POSIX: the child leads a new session, so its process group holds everything it starts unless a
descendant deliberately leaves it; those are caught by the psutil descendant walk (a snapshot
taken every half second and once more just before the kill). Windows: a new process group plus
the same psutil walk.

The child dies with its agent (docs/adr/0031): on Linux it asks the kernel for SIGKILL when the
agent dies (`script_child`), on Windows the agent puts it in a job object that is closed with the
agent (`job_object`); and a killed agent's next start ends whatever of the journaled tree is left
(`kill_survivors`).
"""

import asyncio
import codecs
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import psutil

from tether.agent.journal import ScriptProcess
from tether.agent.script_child import GO

Stream = Literal["stdout", "stderr"]
OnOutput = Callable[[Stream, str], Awaitable[None]]

CHUNK_BYTES = 64 * 1024
TRACK_INTERVAL_SECONDS = 0.5
EXIT_POLL_SECONDS = 0.02


async def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> asyncio.subprocess.Process:
    """Start the child with pipes for stdout and stderr, in its own group.

    stdin is a pipe only the agent holds: the child waits on it for the agent's go (one byte,
    `script_child.GO`) before running anything, and its end of file tells the child the agent is gone.
    """
    if sys.platform == "win32":
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
        )
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )


def describe(pid: int) -> ScriptProcess:
    """What the journal keeps of a freshly started child: pid, process group, create time."""
    create_time = psutil.Process(pid).create_time()
    pgid: int | None = None
    if sys.platform != "win32":
        pgid = os.getpgid(pid)
    return ScriptProcess(pid=pid, pgid=pgid, create_time=create_time)


async def let_start(process: asyncio.subprocess.Process) -> None:
    """Send the child its go and close its stdin; it then runs the script."""
    if process.stdin is None:
        raise RuntimeError("The script process was started without its go pipe.")
    process.stdin.write(GO)
    await process.stdin.drain()
    process.stdin.close()


def _same_process(process: psutil.Process, create_time: float) -> bool:
    # psutil derives create times from boot time and clock ticks: equal to well under 10 ms.
    return abs(process.create_time() - create_time) < 0.01


def survivors(record: ScriptProcess) -> list[psutil.Process]:
    """The processes of a journaled script tree that are still alive, and only those.

    Each is identified by pid and create time, so a pid the system gave to an unrelated process
    since is never touched:
    - the child itself, and every descendant the run's snapshots journaled (including those that
      left the group for a session of their own);
    - the child's process group, only while the child's pid is unused or still the child's:
      Linux keeps a number out of reuse while any process is in the group of that number, so a
      reused pid means the old group is empty; members started before the child are spared;
    - every descendant of what was found, started after the child.
    """
    found: dict[int, psutil.Process] = {}
    for pid, created in ((record.pid, record.create_time), *record.descendants):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if _same_process(process, created):
                found[pid] = process
    group_is_ours = record.pid in found or not psutil.pid_exists(record.pid)
    if group_is_ours and record.pgid is not None and sys.platform != "win32":
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if (
                    process.pid != os.getpid()
                    and os.getpgid(process.pid) == record.pgid
                    and process.create_time() >= record.create_time
                ):
                    found[process.pid] = process
    for process in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.create_time() >= record.create_time:
                        found[child.pid] = child
    return [p for p in found.values() if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    # A zombie has already ended; only its parent's wait is missing.
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_survivors(record: ScriptProcess) -> int:
    """Kill what is left of a journaled script tree; returns how many processes were killed."""
    victims = {p.pid: p for p in survivors(record)}
    # Frozen first, then looked for again: whatever forked before the freeze is found now.
    for victim in victims.values():
        with contextlib.suppress(psutil.Error):
            victim.suspend()
    if victims:
        victims.update({p.pid: p for p in survivors(record)})
    killed = 0
    for victim in victims.values():
        with contextlib.suppress(psutil.Error):
            victim.kill()
            killed += 1
    return killed


async def exit_code(process: asyncio.subprocess.Process) -> int:
    """The child's exit code, as soon as it has exited.

    Not `process.wait()`: that also waits for the output pipes to close, and a process the script
    left behind can hold them open.
    """
    # asyncio signals the exit only through wait(); returncode is set the moment it happens.
    while process.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(EXIT_POLL_SECONDS)
    return process.returncode


def close_pipes(process: asyncio.subprocess.Process) -> None:
    """Release the child's pipes even if a process that escaped the kill still holds them."""
    # asyncio offers no public way to close a subprocess transport; the transport is the owner.
    transport = getattr(process, "_transport", None)
    if transport is not None:
        transport.close()


class ProcessTree:
    """Everything a script started, remembered by (pid, create time) so a reused pid is spared."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._seen: dict[int, float] = {}

    def snapshot(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.root_pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self._seen[child.pid] = child.create_time()

    async def track(self, on_new: Callable[[dict[int, float]], None] | None = None) -> None:
        """Snapshot the descendants until cancelled; `on_new` gets each snapshot's newcomers
        (pid -> create time), so the journal knows them should the agent die (docs/adr/0031)."""
        while True:
            before = dict(self._seen)
            await asyncio.to_thread(self.snapshot)
            new = {
                pid: created for pid, created in self._seen.items() if before.get(pid) != created
            }
            if new and on_new is not None:
                on_new(new)
            await asyncio.sleep(TRACK_INTERVAL_SECONDS)

    def _known_alive(self) -> list[psutil.Process]:
        alive = []
        for pid, created in self._seen.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() == created:
                    alive.append(process)
        return alive

    def kill_group(self) -> None:
        """Kill whatever is left in the child's process group (POSIX; no-op on Windows)."""
        if sys.platform != "win32":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.root_pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """Kill the child, its process group and every descendant ever seen."""
        if sys.platform != "win32":
            # Freeze the group first so nobody forks a new child between the walk and the kill.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.root_pid, signal.SIGSTOP)
        self.snapshot()
        victims = self._known_alive()
        with contextlib.suppress(psutil.Error):
            victims.insert(0, psutil.Process(self.root_pid))
        if sys.platform == "win32":
            for victim in victims:
                with contextlib.suppress(psutil.Error):
                    victim.suspend()
        self.kill_group()
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()


class OutputBudget:
    """stdout and stderr together may forward at most `limit` bytes; the rest is drained."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.used = 0
        self.truncated = False
        self._notice_sent = False

    def take(self, size: int) -> int:
        allowed = min(size, self.limit - self.used)
        self.used += allowed
        if allowed < size:
            self.truncated = True
        return allowed

    def notice_due(self) -> bool:
        if self.truncated and not self._notice_sent:
            self._notice_sent = True
            return True
        return False


def limit_notice(limit: int) -> str:
    return f"Output limit of {limit} bytes reached; further output dropped."


async def pump_output(
    stream: asyncio.StreamReader, name: Stream, budget: OutputBudget, on_output: OnOutput
) -> None:
    """Forward `stream` in chunks as they arrive, decoded as UTF-8, until end of file."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = await stream.read(CHUNK_BYTES)
        if not data:
            break
        allowed = budget.take(len(data))
        if allowed:
            text = decoder.decode(data[:allowed])
            if text:
                await on_output(name, text)
        if budget.notice_due():
            # Bytes cut mid-character must not turn into a stray replacement character.
            decoder.reset()
            await on_output("stderr", "\n" + limit_notice(budget.limit) + "\n")
    rest = decoder.decode(b"", final=True)
    if rest and not budget.truncated:
        await on_output(name, rest)
