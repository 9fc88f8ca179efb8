"""A killed agent's jobs, told truthfully at its next start, with real processes (docs/adr/0031).

A stand-in agent (`tests.agent.job_host`: the real job runner, journal and script handler) is
killed with SIGKILL mid-run; a new runner on the same journal is the restarted agent.
"""

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

import tether.agent.scripts
from tests.agent.script_recorder import Recorder
from tether.agent import script_child, script_process
from tether.agent.actions import HANDLERS
from tether.agent.gate import ResponseGate
from tether.agent.jobs import JobRunner
from tether.agent.journal import Journal, ScriptProcess
from tether.protocol import JobRequest, Policy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")

ROOT = Path(__file__).resolve().parents[2]


class Wire:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def statuses(self, job_id: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "job.status" and f["job_id"] == job_id]


def script_job(job_id: str, source: str, **extra: Any) -> JobRequest:
    return JobRequest(
        job_id=job_id, action="script.run", args={"source": source}, timeout_seconds=60, **extra
    )


def restarted_agent(state: Path) -> JobRunner:
    """What `tether agent run` builds on start, with a policy that allows response actions."""
    gate = ResponseGate()
    gate.apply(Policy(segment="ir", active_response=True))
    return JobRunner(Journal(state / "journal.db"), HANDLERS, gate)


def read_frames(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stdout_of(frames: list[dict[str, Any]], job_id: str) -> str:
    return "".join(
        f.get("text") or ""
        for f in frames
        if f["type"] == "job.output" and f["job_id"] == job_id and f["stream"] == "stdout"
    )


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def settle(jobs: JobRunner) -> None:
    for _ in range(1000):
        if not jobs._tasks:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("jobs still running")


def when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Any]:
    """Start the stand-in agent with some jobs; every process it left is gone after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(slots: int, *jobs: JobRequest) -> subprocess.Popen[bytes]:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.agent.job_host",
                str(tmp_path),
                str(tmp_path / "frames.jsonl"),
                str(slots),
                *(j.model_dump_json() for j in jobs),
            ],
            cwd=ROOT,
            start_new_session=True,
        )
        started.append(popen)
        return popen

    yield start
    for popen in started:
        popen.kill()
        popen.wait(10)


def test_a_script_dies_with_its_agent_and_a_job_never_started_runs_once_after(
    tmp_path: Path, host: Any
) -> None:
    marker, counter = tmp_path / "marker", tmp_path / "counter"
    slow = script_job(
        "slow",
        "import os, time\n"
        "print('pid', os.getpid(), flush=True)\n"
        "time.sleep(3)\n"
        f"open({str(marker)!r}, 'w').write('the script finished its work')\n",
    )
    waiting = script_job("waiting", f"open({str(counter)!r}, 'a').write('ran\\n')\n")
    agent = host(1, slow, waiting)  # one slot: "waiting" stays delivered behind "slow"
    frames_file = tmp_path / "frames.jsonl"
    wait_until(lambda: "\n" in stdout_of(read_frames(frames_file), "slow"), 20, "the script")
    # A surviving script writes its marker 3 s after it started, which was before this moment.
    seen_running = time.monotonic()
    script_pid = int(stdout_of(read_frames(frames_file), "slow").split()[1])
    sent = read_frames(frames_file)
    assert [f["state"] for f in sent if f.get("job_id") == "waiting"] == ["delivered"]

    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    # The script's child died with its agent, before it could do its work.
    wait_until(lambda: not psutil.pid_exists(script_pid), 5, "the script to die with its agent")
    time.sleep(max(0.0, seen_running + 3.5 - time.monotonic()))
    assert not marker.exists()

    async def restart() -> Wire:
        restarted, wire = restarted_agent(tmp_path), Wire()
        await restarted.attach(wire.send)
        stopped = Journal(tmp_path / "journal.db").last_alive()
        assert stopped is not None
        assert datetime.now(UTC) - stopped < timedelta(seconds=30)
        assert [(s["state"], s["error"]) for s in wire.statuses("slow")] == [
            (
                "failed",
                f"The agent stopped at about {when(stopped)} while the script was running; "
                "the script was ended with it; output sent before then is kept.",
            )
        ]
        # What the script printed before the agent died is sent again with the ending.
        assert stdout_of(wire.frames, "slow") == f"pid {script_pid}\n"
        assert wire.statuses("waiting") == []
        # The platform sends both again on connect: the ended one is answered, never run; the
        # one never started runs now, once, however often it is sent.
        await restarted.on_job(slow)
        await restarted.on_job(waiting)
        await restarted.on_job(waiting)
        await settle(restarted)
        await restarted.on_job(waiting)
        await settle(restarted)
        return wire

    wire = asyncio.run(restart())
    assert counter.read_text() == "ran\n"
    assert not marker.exists()
    # Started once; the resends are answered with the state it held at that moment.
    assert [s["state"] for s in wire.statuses("waiting")] == [
        "delivered",
        "running",
        "succeeded",
        "succeeded",
    ]
    assert [s["state"] for s in wire.statuses("slow")] == ["failed", "failed"]


def test_what_a_script_started_is_killed_at_the_next_start_and_the_ending_says_so(
    tmp_path: Path, host: Any
) -> None:
    job = script_job(
        "forks",
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n",
    )
    agent = host(8, job)
    frames_file = tmp_path / "frames.jsonl"
    wait_until(lambda: "\n" in stdout_of(read_frames(frames_file), "forks"), 20, "the script")
    child = psutil.Process(int(stdout_of(read_frames(frames_file), "forks").split()[1]))
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    time.sleep(0.5)
    # The script died with the agent; the process it started outlives both, for now.
    assert child.is_running()
    assert child.status() != psutil.STATUS_ZOMBIE

    async def restart() -> Wire:
        wire = Wire()
        await restarted_agent(tmp_path).attach(wire.send)
        return wire

    wire = asyncio.run(restart())
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 5, "kill")
    stopped = Journal(tmp_path / "journal.db").last_alive()
    assert stopped is not None
    [status] = wire.statuses("forks")
    assert status["state"] == "failed"
    assert re.fullmatch(
        re.escape(
            f"The agent stopped at about {when(stopped)} while the script was running; 1 of the "
            "script's processes kept running until the agent started again at "
        )
        + r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        + re.escape(
            " and ended them; output sent before the agent stopped is kept, later output is lost."
        ),
        status["error"],
    ), status["error"]


def test_a_process_the_script_moved_to_a_session_of_its_own_is_killed_at_the_next_start(
    tmp_path: Path, host: Any
) -> None:
    # Outside the script's group, so only the journaled snapshots of its tree can find it.
    job = script_job(
        "detaches",
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "time.sleep(1.5)\n"  # past a snapshot of the tree
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n",
    )
    agent = host(8, job)
    frames_file = tmp_path / "frames.jsonl"
    wait_until(lambda: "\n" in stdout_of(read_frames(frames_file), "detaches"), 20, "the script")
    child = psutil.Process(int(stdout_of(read_frames(frames_file), "detaches").split()[1]))
    assert os.getpgid(child.pid) == child.pid
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    time.sleep(0.5)
    assert child.is_running()
    assert child.status() != psutil.STATUS_ZOMBIE

    async def restart() -> Wire:
        wire = Wire()
        await restarted_agent(tmp_path).attach(wire.send)
        return wire

    wire = asyncio.run(restart())
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 5, "kill")
    [status] = wire.statuses("detaches")
    assert (
        "1 of the script's processes kept running until the agent started again"
        in (status["error"])
    )


@pytest.fixture
def bystander() -> Iterator[psutil.Process]:
    """An unrelated process in a session of its own."""
    popen = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield psutil.Process(popen.pid)
    finally:
        popen.kill()
        popen.wait(10)


def test_a_pid_reused_by_an_unrelated_process_is_never_killed(
    bystander: psutil.Process,
) -> None:
    # The journal's script had this pid, but the process now holding it started at another time.
    reused = ScriptProcess(
        pid=bystander.pid, pgid=bystander.pid, create_time=bystander.create_time() - 60
    )
    assert script_process.survivors(reused) == []
    assert script_process.kill_survivors(reused) == 0
    # Nor when the journal saw it as a descendant that started at another time.
    free_pid = max(psutil.pids()) + 1000
    seen_before = ScriptProcess(
        pid=free_pid,
        pgid=free_pid,
        create_time=bystander.create_time() - 120,
        descendants=((bystander.pid, bystander.create_time() - 60),),
    )
    assert script_process.kill_survivors(seen_before) == 0
    assert bystander.is_running()
    assert bystander.status() != psutil.STATUS_ZOMBIE


def test_a_group_of_processes_older_than_the_script_is_never_killed(
    bystander: psutil.Process,
) -> None:
    # A journal naming a vanished child whose group number another, older, group now holds.
    free_pid = max(psutil.pids()) + 1000
    record = ScriptProcess(pid=free_pid, pgid=bystander.pid, create_time=time.time())
    assert script_process.kill_survivors(record) == 0
    assert bystander.is_running()


def test_the_recorded_child_itself_is_killed_when_it_is_still_the_same_process(
    bystander: psutil.Process,
) -> None:
    record = ScriptProcess(
        pid=bystander.pid, pgid=os.getpgid(bystander.pid), create_time=bystander.create_time()
    )
    assert script_process.kill_survivors(record) == 1
    wait_until(
        lambda: not bystander.is_running() or bystander.status() == psutil.STATUS_ZOMBIE,
        5,
        "the recorded child to be killed",
    )


def test_a_script_job_whose_child_was_never_told_to_start_runs_once_when_sent_again(
    tmp_path: Path,
) -> None:
    counter = tmp_path / "counter"
    job = script_job("early", f"open({str(counter)!r}, 'a').write('ran\\n')\n")
    journal = Journal(tmp_path / "journal.db")
    journal.receive("early", "script.run")
    # The agent died after saying running, before it journaled a child and sent it its go.
    journal.set_running("early")

    async def restart() -> Wire:
        restarted, wire = restarted_agent(tmp_path), Wire()
        await restarted.attach(wire.send)
        assert wire.frames == []
        await restarted.on_job(job)
        await settle(restarted)
        await restarted.on_job(job)
        return wire

    wire = asyncio.run(restart())
    assert counter.read_text() == "ran\n"
    assert [s["state"] for s in wire.statuses("early")] == ["running", "succeeded", "succeeded"]


def bootstrap(tmp_path: Path, agent_pid: int, go: bytes | None) -> tuple[int, bool]:
    """Start a script child as the agent does, feed it `go` (None: end of file at once);
    its exit status and whether the script ran."""
    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    child = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            tether.agent.scripts._BOOTSTRAP,
            str(ROOT / "src"),
            str(script),
            str(agent_pid),
        ],
        input=go or b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    return child.returncode, marker.exists()


def test_a_child_runs_the_script_only_after_its_agents_go(tmp_path: Path) -> None:
    assert bootstrap(tmp_path, os.getpid(), script_child.GO) == (0, True)


def test_a_child_whose_agent_died_before_its_go_never_runs_the_script(tmp_path: Path) -> None:
    # The agent died between starting the child and journaling it: its end of the pipe closed.
    assert bootstrap(tmp_path, os.getpid(), None) == (script_child.EXIT_AGENT_GONE, False)


def test_a_child_whose_parent_is_not_its_agent_never_runs_the_script(tmp_path: Path) -> None:
    # The agent died before the child asked to die with it: the child now has another parent.
    assert bootstrap(tmp_path, 1, script_child.GO) == (script_child.EXIT_AGENT_GONE, False)


class Journaled:
    """A process recorder backed by a real journal, or by one that refuses every write."""

    def __init__(self, journal: Journal, job_id: str, full: bool = False) -> None:
        self.journal, self.job_id, self.full = journal, job_id, full
        self.order: list[str] = []

    def started(self, process: ScriptProcess) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        self.journal.record_process(self.job_id, process)
        self.order.append("started")

    def descendants(self, seen: dict[int, float]) -> None:
        self.journal.record_descendants(self.job_id, seen)

    def exited(self, exit_code: int) -> None:
        self.journal.record_exit(self.job_id, exit_code)
        self.order.append("exited")


def test_a_run_journals_its_child_before_the_script_and_its_exit_after(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    processes = Journaled(journal, "j1")
    recorder = Recorder()
    outcome = asyncio.run(
        recorder.run(
            "import os\nprint(os.getpid(), os.getpgid(0))\nraise SystemExit(4)\n",
            processes=processes,
        )
    )
    assert outcome.exit_code == 4
    pid, pgid = (int(n) for n in recorder.text("stdout").split())
    record = journal.process_of("j1")
    assert record is not None
    assert (record.pid, record.pgid, record.exit_code) == (pid, pgid, 4)
    assert processes.order == ["started", "exited"]


def test_a_script_whose_process_cannot_be_journaled_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    recorder = Recorder()
    outcome = asyncio.run(
        recorder.run(
            f"open({str(marker)!r}, 'w').write('ran')\n",
            processes=Journaled(Journal(tmp_path / "journal.db"), "j1", full=True),
        )
    )
    assert outcome.error == (
        "The agent could not record the script's process, so it did not run it: "
        "database or disk is full."
    )
    assert outcome.exit_code is None
    assert not marker.exists()
