"""The agent's job lifecycle: journal first, acknowledge every step, run once, report until acked."""

import asyncio
import contextlib
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from tether.agent.context import job_context
from tether.agent.gate import ResponseGate
from tether.agent.jobs import JobRunner
from tether.agent.journal import Journal, ScriptProcess
from tether.protocol import ActionSpec, JobAck, JobCancel, JobRequest, JobStatus, Permission


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0
    lines: int = 0


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ran: int


RUNS: list[str] = []


async def work(args: Args) -> Result:
    context = job_context()
    RUNS.append(context.job_id)
    for n in range(args.lines):
        await context.output("stdout", f"line {n}\n")
    await context.row({"n": 1, "name": "x"})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(context.cancel.wait(), args.seconds)
    return Result(ran=len(RUNS))


async def stubborn(args: Args) -> Result:
    # Ignores the cancel event: the runner must cancel its task after the grace period.
    await asyncio.sleep(args.seconds)
    return Result(ran=0)


ACTIONS = {
    name: ActionSpec(
        name=name,
        args=Args,
        result=Result,
        permission=Permission.HOSTS_MANAGE,
        timeout_seconds=30,
        description="test",
        response=False,
    )
    for name in ("test.work", "test.stubborn")
}
HANDLERS: dict[str, Any] = {"test.work": work, "test.stubborn": stubborn}


class Wire:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def states(self, job_id: str) -> list[str]:
        return [
            f["state"] for f in self.frames if f["type"] == "job.status" and f["job_id"] == job_id
        ]

    def output(self, job_id: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "job.output" and f["job_id"] == job_id]


def runner(path: Path) -> JobRunner:
    return JobRunner(Journal(path / "journal.db"), HANDLERS, ResponseGate(), ACTIONS)


def job(job_id: str = "j1", **kwargs: Any) -> JobRequest:
    kwargs.setdefault("action", "test.work")
    kwargs.setdefault("args", {})
    return JobRequest(job_id=job_id, **kwargs)


async def settle(jobs: JobRunner) -> None:
    for _ in range(200):
        if not jobs._tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("jobs still running")


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()


async def test_every_step_is_acknowledged_in_order_with_output(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(args={"lines": 2}))
    await settle(jobs)
    assert wire.states("j1") == ["delivered", "running", "succeeded"]
    final = next(f for f in wire.frames if f.get("state") == "succeeded")
    assert final["result"] == {"ran": 1}
    pieces = wire.output("j1")
    assert [(p["seq"], p["stream"]) for p in pieces] == [(0, "stdout"), (1, "stdout"), (2, "row")]
    assert pieces[2]["fields"] == {"n": 1, "name": "x"}


async def test_a_job_id_seen_before_never_runs_again(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job())
    await settle(jobs)
    await jobs.on_job(job())  # the platform re-sends after a reconnect
    await settle(jobs)
    assert RUNS == ["j1"]
    # The resend is answered with the stored outcome, output included.
    assert wire.states("j1") == ["delivered", "running", "succeeded", "succeeded"]
    assert len(wire.output("j1")) == 2


async def test_also_across_agent_restarts(tmp_path: Path) -> None:
    first, wire = runner(tmp_path), Wire()
    await first.attach(wire.send)
    await first.on_job(job())
    await settle(first)
    second, later = runner(tmp_path), Wire()
    await second.attach(later.send)
    # Unacknowledged results are sent again on the new connection, before anything else.
    assert later.states("j1") == ["succeeded"]
    await second.on_job(job())
    assert RUNS == ["j1"]


async def test_acknowledged_results_are_dropped_and_not_resent(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(args={"lines": 3}))
    await settle(jobs)
    jobs.on_ack(JobAck(job_ids=["j1"]))
    again = Wire()
    await jobs.attach(again.send)
    assert again.frames == []
    await jobs.on_job(job())  # still known: not run again, nothing owed to resend
    assert RUNS == ["j1"]


async def test_results_wait_in_the_journal_while_disconnected(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(args={"seconds": 0.2, "lines": 1}))
    await asyncio.sleep(0.05)
    jobs.detach()  # connection lost mid-run
    await settle(jobs)
    assert wire.states("j1") == ["delivered", "running"]
    later = Wire()
    await jobs.attach(later.send)
    assert later.states("j1") == ["succeeded"]
    assert [p["seq"] for p in later.output("j1")] == [0, 1]


async def test_a_job_running_when_the_agent_stopped_ends_saying_its_outcome_is_unknown(
    tmp_path: Path,
) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(args={"seconds": 30}))
    await asyncio.sleep(0.05)
    await jobs.stop()  # the agent process stops; the journal still says running
    assert wire.states("j1") == ["delivered", "running"]
    stopped = Journal(tmp_path / "journal.db").last_alive()
    assert stopped is not None
    restarted, later = runner(tmp_path), Wire()
    await restarted.attach(later.send)
    statuses = [f for f in later.frames if f["type"] == "job.status"]
    assert [(s["state"], s["error"]) for s in statuses] == [
        (
            "failed",
            f"The agent stopped at about {stopped:%Y-%m-%d %H:%M:%S} UTC while this job was "
            "running; whether it completed is unknown.",
        )
    ]
    await restarted.on_job(job())
    assert RUNS == ["j1"]


async def test_a_job_delivered_but_not_started_runs_once_when_sent_again(tmp_path: Path) -> None:
    # The previous agent process journaled it (and said delivered), then died.
    Journal(tmp_path / "journal.db").receive("j1", "test.work")
    restarted, wire = runner(tmp_path), Wire()
    await restarted.attach(wire.send)
    assert wire.frames == []  # nothing to say yet: it has not run
    await restarted.on_job(job(args={"lines": 1}))
    await settle(restarted)
    await restarted.on_job(job(args={"lines": 1}))
    await settle(restarted)
    assert RUNS == ["j1"]
    assert wire.states("j1") == ["running", "succeeded", "succeeded"]
    # And not again after yet another restart.
    again, later = runner(tmp_path), Wire()
    await again.attach(later.send)
    await again.on_job(job())
    await settle(again)
    assert RUNS == ["j1"]


async def test_a_job_not_started_is_ended_not_started_when_it_comes_back_too_late(
    tmp_path: Path,
) -> None:
    Journal(tmp_path / "journal.db").receive("j1", "test.work")
    restarted, wire = runner(tmp_path), Wire()
    await restarted.attach(wire.send)
    late = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await restarted.on_job(job(not_after=late))
    await settle(restarted)
    assert RUNS == []
    statuses = [f for f in wire.frames if f["type"] == "job.status"]
    assert [(s["state"], s["error"]) for s in statuses] == [
        (
            "failed",
            "Not started: the agent stopped before it could start this job and was back only "
            "after the job's not-after time (2026-01-02 03:04:05 UTC).",
        )
    ]


async def test_a_script_that_ended_before_its_agent_could_record_it_says_so(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.receive("j1", "script.run")
    journal.set_running("j1")
    # A pid no process holds: the child is long gone.
    journal.record_process("j1", ScriptProcess(pid=2**22 + 7, pgid=None, create_time=1.0))
    journal.record_exit("j1", 3)
    stopped = journal.last_alive()  # the job's start
    assert stopped is not None
    restarted, wire = runner(tmp_path), Wire()
    await restarted.attach(wire.send)
    statuses = [f for f in wire.frames if f["type"] == "job.status"]
    assert [(s["state"], s["error"]) for s in statuses] == [
        (
            "failed",
            "The script ended with exit code 3, but the agent stopped at about "
            f"{stopped:%Y-%m-%d %H:%M:%S} UTC before it recorded the job's result; output sent "
            "before then is kept.",
        )
    ]


async def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(args={"seconds": 30}))
    await asyncio.sleep(0.05)
    await jobs.on_cancel(JobCancel(job_id="j1"))
    await settle(jobs)
    assert wire.states("j1") == ["delivered", "running", "cancelled"]


async def test_cancel_of_a_handler_that_ignores_it_cancels_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tether.agent.jobs.CANCEL_GRACE_SECONDS", 0.05)
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(action="test.stubborn", args={"seconds": 30}))
    await asyncio.sleep(0.05)
    await jobs.on_cancel(JobCancel(job_id="j1"))
    await settle(jobs)
    assert wire.states("j1")[-1] == "cancelled"


async def test_a_cancel_before_delivery_keeps_the_job_from_ever_running(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_cancel(JobCancel(job_id="j1"))
    await jobs.on_job(job())
    await settle(jobs)
    assert RUNS == []
    assert wire.states("j1") == ["cancelled", "cancelled"]


async def test_time_limit(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(action="test.stubborn", args={"seconds": 30}, timeout_seconds=0.1))
    await settle(jobs)
    assert wire.states("j1") == ["delivered", "running", "timed_out"]
    final = wire.frames[-1]
    assert final["error"] == (
        "The job did not finish within its time limit of 0.1 s, so it was stopped."
    )


async def test_a_job_arriving_after_its_not_after_time_is_not_run(tmp_path: Path) -> None:
    jobs, wire = runner(tmp_path), Wire()
    await jobs.attach(wire.send)
    past = datetime.now(UTC) - timedelta(minutes=1)
    await jobs.on_job(job(not_after=past))
    await settle(jobs)
    assert RUNS == []
    assert wire.states("j1") == ["delivered", "failed"]
    assert "not-after time" in wire.frames[-1]["error"]


async def test_response_actions_never_run_as_unrecorded_calls(tmp_path: Path) -> None:
    actions = {**ACTIONS, "test.work": dataclasses.replace(ACTIONS["test.work"], response=True)}
    jobs = JobRunner(Journal(tmp_path / "j.db"), HANDLERS, ResponseGate(), actions)
    wire = Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job(ephemeral=True))
    assert RUNS == []
    assert wire.frames[-1]["state"] == "failed"
    assert "only runs as a recorded job" in wire.frames[-1]["error"]


async def test_unrecorded_calls_are_not_journaled(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    jobs, wire = JobRunner(journal, HANDLERS, ResponseGate(), ACTIONS), Wire()
    await jobs.attach(wire.send)
    await jobs.on_job(job("call-1", action="test.stubborn", ephemeral=True))
    assert wire.states("call-1") == ["succeeded"]
    assert journal.get("call-1") is None


def test_acknowledged_ids_are_forgotten_only_after_the_retention(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.receive("old", "test.work")
    journal.finish(JobStatus(job_id="old", state="succeeded", result={"ran": 1}))
    journal.receive("owed", "test.work")
    journal.finish(JobStatus(job_id="owed", state="succeeded", result={"ran": 2}))
    journal.acknowledge(["old"])
    assert journal.purge(timedelta(days=31)) == 0
    assert journal.purge(timedelta(0)) == 1
    assert journal.get("old") is None
    # A result the platform has not confirmed is never dropped.
    assert journal.get("owed") is not None


async def test_the_agent_journals_signs_of_life_only_while_jobs_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tether.agent.endings.ALIVE_SECONDS", 0.05)
    journal = Journal(tmp_path / "journal.db")
    jobs, wire = JobRunner(journal, HANDLERS, ResponseGate(), ACTIONS), Wire()
    await jobs.attach(wire.send)
    beating = asyncio.create_task(jobs.keep_alive())
    await asyncio.sleep(0.2)
    assert journal.last_alive() is None  # idle: no disk writes
    await jobs.on_job(job(args={"seconds": 30}))
    await asyncio.sleep(0.05)
    started = journal.last_alive()
    assert started is not None
    await asyncio.sleep(0.2)
    latest = journal.last_alive()
    assert latest is not None
    assert latest > started
    beating.cancel()
    await jobs.stop()


def test_a_job_never_sent_again_is_forgotten_only_after_the_retention(tmp_path: Path) -> None:
    # Delivered to an agent that died; the platform ended it itself and never sends it again.
    journal = Journal(tmp_path / "j.db")
    journal.receive("orphan", "test.work")
    journal.receive("running", "test.work")
    journal.set_running("running")
    assert journal.purge(timedelta(days=31)) == 0
    assert journal.get("orphan") is not None
    assert journal.purge(timedelta(0)) == 1
    assert journal.get("orphan") is None
    # A job that ran is never forgotten before its ending is confirmed.
    assert journal.get("running") is not None
