import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from tether.agent.action import run_action
from tether.agent.actions import HANDLERS, processes
from tether.agent.actions.processes import _ExecutableHashes, collect_processes, kill_process
from tether.agent.errors import ActionError
from tether.agent.gate import ResponseGate
from tether.agent.hashing import Stopped, digest
from tether.protocol import (
    MAX_COMMAND_LINE,
    TRUNCATION_MARKER,
    JobRequest,
    Policy,
    ProcessList,
    ProcessListArgs,
)

PYTHON = sys.executable
# Above the largest pid Linux hands out (pid_max is at most 2**22).
NO_SUCH_PID = 2**22 + 1


def gate() -> ResponseGate:
    allowing = ResponseGate()
    allowing.apply(Policy(segment="lab", active_response=True))
    return allowing


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts child processes and makes sure none outlives the test."""
    children: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def only(listing: ProcessList, pid: int) -> Any:
    [entry] = [entry for entry in listing.processes if entry.pid == pid]
    return entry


def test_lists_a_child_with_its_details_and_executable_hash(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    child = spawn("sleep", "1001")
    listing = collect_processes(ProcessListArgs(hashes=True, pid=child.pid))
    entry = only(listing, child.pid)
    assert len(listing.processes) == 1
    assert listing.truncated is False
    assert (entry.ppid, entry.name, entry.command_line) == (os.getpid(), "sleep", "sleep 1001")
    assert entry.user == psutil.Process().username()
    assert entry.started is not None
    assert before <= entry.started <= datetime.now(UTC) + timedelta(seconds=5)
    executable = os.path.realpath(f"/proc/{child.pid}/exe")
    assert entry.executable == executable
    assert entry.sha256 == hashlib.sha256(Path(executable).read_bytes()).hexdigest()
    assert entry.hash_unavailable is None


def test_without_hashes_nothing_is_hashed(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    child = spawn("sleep", "1002")
    entry = only(collect_processes(ProcessListArgs(pid=child.pid)), child.pid)
    assert (entry.sha256, entry.hash_unavailable) == (None, None)


def test_filters_by_name_ignoring_case_and_by_user(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    child = spawn("sleep", "1003")
    me = psutil.Process().username()
    by_name = collect_processes(ProcessListArgs(name="LEE"))
    assert child.pid in {entry.pid for entry in by_name.processes}
    assert all("lee" in (entry.name or "").lower() for entry in by_name.processes)
    by_user = collect_processes(ProcessListArgs(name="sleep", user=me.upper()))
    assert child.pid in {entry.pid for entry in by_user.processes}
    nobody = collect_processes(ProcessListArgs(name="sleep", user="no-such-user-here"))
    assert nobody.processes == []
    assert collect_processes(ProcessListArgs(pid=NO_SUCH_PID)).processes == []


def test_command_lines_are_escaped_and_cut_with_a_marker(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    hostile = spawn(PYTHON, "-c", "import time; time.sleep(1000)", "\x1b]0;owned\x07\nnext line")
    long = spawn(PYTHON, "-c", "import time; time.sleep(1000)", "y" * 10_000)
    listing = collect_processes(ProcessListArgs(name="python"))
    shown = only(listing, hostile.pid).command_line
    assert shown.endswith("\\x1b]0;owned\\x07\\x0anext line")
    assert "\x1b" not in shown
    cut = only(listing, long.pid).command_line
    assert len(cut) == MAX_COMMAND_LINE
    assert cut.endswith(TRUNCATION_MARKER)


def test_entry_cap_and_byte_budget_truncate() -> None:
    capped = collect_processes(ProcessListArgs(), max_entries=3)
    assert len(capped.processes) == 3
    assert capped.truncated is True
    assert [entry.pid for entry in capped.processes] == sorted(
        entry.pid for entry in capped.processes
    )
    budgeted = collect_processes(ProcessListArgs(), budget_bytes=1500)
    assert budgeted.truncated is True
    assert 1 <= len(budgeted.processes) < len(collect_processes(ProcessListArgs()).processes)
    assert sum(len(e.model_dump_json().encode()) + 1 for e in budgeted.processes) <= 1500


def test_executables_are_hashed_once_per_file(
    spawn: Callable[..., subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = spawn("sleep", "1004"), spawn("sleep", "1005")
    reads: list[object] = []
    original = digest

    def counting(file: Any, algorithms: Any, stop: Any) -> tuple[dict[str, str], int]:
        reads.append(file)
        return original(file, algorithms, stop)

    monkeypatch.setattr("tether.agent.actions.processes.digest", counting)
    hashes = _ExecutableHashes()
    exe = psutil.Process(first.pid).exe()
    assert hashes.of(first.pid, exe) == hashes.of(second.pid, exe)
    assert hashes.of(first.pid, exe)[0] is not None
    assert len(reads) == 1


def test_a_stopped_listing_ends_early() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        collect_processes(ProcessListArgs(hashes=True), stop=stop)


def test_why_an_executable_has_no_hash() -> None:
    hashes = _ExecutableHashes()
    assert hashes.of(os.getpid(), None) == (None, "no executable")
    assert hashes.of(NO_SUCH_PID, "/usr/bin/gone") == (None, "not found")


def test_listing_survives_processes_ending_while_it_reads() -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["true"], check=False)

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(6):
            listing = collect_processes(ProcessListArgs(hashes=True))
            assert any(entry.pid == os.getpid() for entry in listing.processes)
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def test_unreadable_fields_become_nulls() -> None:
    info = dict.fromkeys(("ppid", "name", "username", "cmdline", "create_time", "exe"))
    entry = processes._describe({**info, "pid": 77}, _ExecutableHashes())
    assert (entry.pid, entry.name, entry.command_line, entry.started) == (77, None, None, None)
    assert (entry.sha256, entry.hash_unavailable) == (None, "no executable")


def test_kills_one_process(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    child = spawn("sleep", "1006")
    result = kill_process(child.pid, tree=False)
    assert result.pid == child.pid
    assert [(p.pid, p.name, p.outcome) for p in result.processes] == [
        (child.pid, "sleep", "killed")
    ]
    assert child.wait(timeout=5) == -signal.SIGKILL


def test_kills_a_tree_with_its_grandchild(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    parent = spawn(
        PYTHON,
        "-c",
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen(['sleep', '1007'])\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(1000)\n",
    )
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    result = kill_process(parent.pid, tree=True)
    outcomes = {p.pid: p.outcome for p in result.processes}
    assert outcomes == {parent.pid: "killed", grandchild: "killed"}
    assert result.processes[0].pid == parent.pid
    assert parent.wait(timeout=5) == -signal.SIGKILL
    assert ended(grandchild)


def test_a_forking_tree_leaves_no_survivor(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    # The shell starts a new child every 10 ms; each is marked by an unusual sleep duration.
    marker = f"{os.getpid() % 1000}7.25"
    shell = spawn("sh", "-c", f"while true; do sleep {marker} & sleep 0.01; done")
    time.sleep(0.3)

    def marked() -> list[int]:
        return [
            proc.pid
            for proc in psutil.process_iter(["cmdline"], ad_value=None)
            if proc.info["cmdline"] == ["sleep", marker] and not ended(proc.pid)
        ]

    try:
        result = kill_process(shell.pid, tree=True)
        assert len(result.processes) > 5
        assert {p.outcome for p in result.processes} <= {"killed", "gone"}
        time.sleep(0.2)
        assert marked() == []
    finally:
        for escaped in marked():
            os.kill(escaped, signal.SIGKILL)


def test_kill_without_tree_leaves_children_alone(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    parent = spawn(
        PYTHON,
        "-c",
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '1008'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(1000)\n",
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        result = kill_process(parent.pid, tree=False)
        assert [p.pid for p in result.processes] == [parent.pid]
        assert not ended(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_process_that_already_ended_is_reported_gone(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    child = spawn("sleep", "1009")
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not ended(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Not yet collected by its parent (this test): a zombie, which has already ended.
    result = kill_process(child.pid, tree=False)
    assert [p.outcome for p in result.processes] == ["gone"]


@pytest.mark.parametrize(
    ("pid", "message"),
    [
        (lambda: 1, "Process 1 is the endpoint's init process, which the agent never kills."),
        (
            os.getpid,
            "Process {pid} is this agent itself; stop the agent through its service manager instead.",
        ),
        (os.getppid, "Process {pid} is an ancestor of this agent, which the agent never kills."),
        (lambda: NO_SUCH_PID, "No process has the pid {pid} on this endpoint."),
    ],
)
def test_refusals_are_one_sentence(pid: Callable[[], int], message: str) -> None:
    with pytest.raises(ActionError) as caught:
        kill_process(pid(), tree=True)
    assert str(caught.value) == message.format(pid=pid())


def test_a_refused_kill_fails_and_resumes_what_it_stopped(
    spawn: Callable[..., subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    child = spawn("sleep", "1010")

    def refuse(self: psutil.Process) -> None:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "kill", refuse)
    with pytest.raises(ActionError) as caught:
        kill_process(child.pid, tree=True)
    assert (
        str(caught.value) == f"The endpoint denied the agent killing process {child.pid} (sleep)."
    )
    assert psutil.Process(child.pid).status() != psutil.STATUS_STOPPED


def test_a_refused_tree_kill_says_how_many_descendants_ended(
    spawn: Callable[..., subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = spawn(
        PYTHON,
        "-c",
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '1013'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(1000)\n",
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    name = psutil.Process(parent.pid).name()
    original = psutil.Process.kill

    def refuse_the_parent(self: psutil.Process) -> None:
        if self.pid == parent.pid:
            raise psutil.AccessDenied(self.pid)
        original(self)

    monkeypatch.setattr(psutil.Process, "kill", refuse_the_parent)
    with pytest.raises(ActionError) as caught:
        kill_process(parent.pid, tree=True)
    assert str(caught.value) == (
        f"The endpoint denied the agent killing process {parent.pid} ({name}); "
        "1 of its 1 descendants ended."
    )
    assert ended(child)
    # Stopped while its tree was read, then resumed since it was not killed.
    assert psutil.Process(parent.pid).status() != psutil.STATUS_STOPPED


def test_a_survivor_is_reported_after_the_wait(
    spawn: Callable[..., subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    child = spawn("sleep", "1011")
    monkeypatch.setattr(psutil.Process, "kill", lambda self: None)
    with pytest.raises(ActionError) as caught:
        kill_process(child.pid, tree=False, wait_seconds=0.2)
    assert str(caught.value) == (
        f"The agent sent process {child.pid} (sleep) a kill signal but it still runs after 0.2 seconds."
    )
    assert child.poll() is None


async def test_kill_through_run_action(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    child = spawn("sleep", "1012")
    status = await run_action(
        JobRequest(job_id="k", action="processes.kill", args={"pid": child.pid}), HANDLERS, gate()
    )
    assert status.state == "succeeded", status.error
    assert status.result == {
        "pid": child.pid,
        "processes": [{"pid": child.pid, "name": "sleep", "outcome": "killed"}],
        "truncated": False,
    }
    refused = await run_action(
        JobRequest(job_id="k1", action="processes.kill", args={"pid": 1}), HANDLERS, gate()
    )
    assert (refused.state, refused.error) == (
        "failed",
        "Process 1 is the endpoint's init process, which the agent never kills.",
    )


async def test_listing_through_run_action_fits_a_frame() -> None:
    status = await run_action(
        JobRequest(job_id="l", action="processes.list", args={"hashes": True}), HANDLERS, gate()
    )
    assert status.state == "succeeded", status.error
    assert status.result is not None
    listing = ProcessList.model_validate(status.result)
    assert any(entry.pid == os.getpid() for entry in listing.processes)


SYSTEM32 = r"C:\Windows\System32"


@pytest.mark.parametrize(
    ("pid", "name", "exe", "critical", "message"),
    [
        (4, "System", None, False, "Process 4 is the Windows System process"),
        (0, "System Idle Process", None, False, "Process 0 is the Windows System process"),
        (
            712,
            "lsass.exe",
            r"C:\Windows\System32\lsass.exe",
            False,
            "Process 712 (lsass.exe) is a Windows system process whose end stops the machine "
            "or its logon, so the agent never kills it.",
        ),
        (
            # Protected (PPL) processes may not show their image: the name is enough then.
            540,
            "CSRSS.EXE",
            None,
            False,
            "Process 540 (CSRSS.EXE) is a Windows system process",
        ),
        (620, "wininit.exe", r"c:\windows\system32\WININIT.EXE", False, "Process 620 (wininit"),
        (380, "smss.exe", r"C:\Windows\System32\smss.exe", False, "Process 380 (smss.exe)"),
        (700, "services.exe", r"C:\Windows\System32\services.exe", False, "Process 700"),
        (800, "winlogon.exe", r"C:\Windows\System32\winlogon.exe", False, "Process 800"),
        (
            # Whatever its name, a process Windows marks critical.
            900,
            "svchost.exe",
            r"C:\Windows\System32\svchost.exe",
            True,
            "Process 900 (svchost.exe) is marked critical by Windows, which stops the machine "
            "when it ends, so the agent never kills it.",
        ),
        (120, "Registry", None, False, "Process 120 (Registry) is part of the Windows kernel"),
    ],
)
def test_windows_system_processes_are_never_killed(
    pid: int, name: str, exe: str | None, critical: bool, message: str
) -> None:
    refusal = processes.windows_refusal(pid, name, exe, critical, SYSTEM32)
    assert refusal is not None
    assert refusal.startswith(message)


@pytest.mark.parametrize(
    ("name", "exe"),
    [
        # Malware that calls itself lsass.exe elsewhere is not protected by the name.
        ("lsass.exe", r"C:\Users\Public\lsass.exe"),
        ("csrss.exe", r"C:\Windows\Temp\csrss.exe"),
        ("notepad.exe", r"C:\Windows\System32\notepad.exe"),
        ("Registry", r"C:\Users\Public\Registry"),
    ],
)
def test_a_system_name_elsewhere_can_be_killed(name: str, exe: str) -> None:
    assert processes.windows_refusal(1234, name, exe, False, SYSTEM32) is None


def test_linux_kernel_threads_and_init_are_never_killed() -> None:
    assert processes.linux_refusal(1, 0) == (
        "Process 1 is the endpoint's init process, which the agent never kills."
    )
    assert processes.linux_refusal(2, 0, has_command_line=False) == (
        "Process 2 is a kernel thread, which the agent never kills."
    )
    assert processes.linux_refusal(57, 2, has_command_line=False) == (
        "Process 57 is a kernel thread, which the agent never kills."
    )
    # In a container pid 2 may be an ordinary process with a command line.
    assert processes.linux_refusal(57, 2, has_command_line=True) is None
    assert processes.linux_refusal(4, 1) is None


def test_a_tree_holding_a_system_process_is_not_touched(
    spawn: Callable[..., subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = spawn(
        PYTHON,
        "-c",
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '1011'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(1000)\n",
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    real = processes._system_refusal

    def child_is_critical(pid: int) -> str | None:
        if pid == child:
            return f"Process {pid} (lsass.exe) is a Windows system process."
        return real(pid)

    monkeypatch.setattr(processes, "_system_refusal", child_is_critical)
    with pytest.raises(ActionError) as caught:
        kill_process(parent.pid, tree=True)
    assert str(caught.value) == (
        f"Nothing was killed: the tree of process {parent.pid} holds a process the agent never "
        f"kills. Process {child} (lsass.exe) is a Windows system process."
    )
    # Both still run, and the parent was resumed.
    assert psutil.Process(parent.pid).status() != psutil.STATUS_STOPPED
    assert psutil.Process(child).status() != psutil.STATUS_STOPPED
    os.kill(child, signal.SIGKILL)
