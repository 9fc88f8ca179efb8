"""Submitting an action and following its jobs to their end with the long poll.

Every wait is a long poll (`GET /jobs/{id}/output?after=CURSOR&wait=20`): the platform answers as
soon as there is output or the job ends. A broken connection is retried for a while, so a
platform restart or a flaky network does not end a follow that the jobs outlive anyway.
"""

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError, Unreachable
from tether.cli.output import plain
from tether.cli.times import short_time
from tether.protocol import AWAITING_APPROVAL, FINAL_STATES

LONG_POLL_SECONDS = 20.0
# How long a follow keeps retrying a platform it cannot reach before giving up.
RETRY_SECONDS = 120.0
# Long polls in flight at once; beyond this many jobs each poll waits briefly, in turn.
MAX_FOLLOWERS = 16

Job = dict[str, Any]
Piece = dict[str, Any]
OnOutput = Callable[[Job, Piece], None]


@dataclass(frozen=True)
class Poll:
    """One answer of the long poll: the job now, output after the cursor, the next cursor."""

    job: Job
    output: list[Piece]
    cursor: int

    @property
    def drained(self) -> bool:
        """The job ended and nothing is left to read."""
        return self.job["state"] in FINAL_STATES and not self.output


def job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


def submit(
    api: Api,
    action: str,
    args: dict[str, Any],
    *,
    hosts: list[str] | None = None,
    segment: str | None = None,
    everything: bool = False,
    ttl_seconds: int | None = None,
    not_after: datetime | None = None,
    timeout_seconds: float | None = None,
    script: str | None = None,
) -> dict[str, Any]:
    """Queue `action` for the selection; returns the batch (its jobs, refused hosts).

    With `script`, the platform takes that library script's latest version and checks the
    parameters against its schema, so the audit log holds the text that actually runs.
    """
    body: dict[str, Any] = {"action": action, "args": args}
    if script is not None:
        body["script"] = {"name": script}
    if hosts is not None:
        body["hosts"] = hosts
    elif segment is not None:
        body["segment"] = segment
    else:
        body["all"] = everything
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    if not_after is not None:
        body["not_after"] = not_after.isoformat()
    if timeout_seconds is not None:
        body["timeout_seconds"] = timeout_seconds
    batch: dict[str, Any] = api.post("/jobs", json=body)
    if batch.get("notice"):
        sys.stderr.write(approval_notice(batch) + "\n")
        if all(j["state"] == AWAITING_APPROVAL for j in batch["jobs"]):
            # Nothing can run before a second person decides, which may take hours: the
            # command ends here instead of waiting.
            raise typer.Exit(0)
    return batch


def approval_notice(batch: dict[str, Any]) -> str:
    """The platform's sentence about jobs awaiting approval, and what to do next."""
    waiting = [j for j in batch["jobs"] if j["state"] == AWAITING_APPROVAL]
    first = waiting[0]["id"] if waiting else batch["id"]
    tier = (batch.get("approval") or {}).get("tier", "the same")
    return (
        f"{batch['notice']} Someone else with the {tier} tier approves it with "
        f"'tether job approve {first}'; follow it with 'tether job show {first}'."
    )


def offline_notices(api: Api, jobs: list[Job]) -> list[str]:
    """'host X is offline; ...' for each queued job whose host is not connected now."""
    queued = [j for j in jobs if j["state"] == "queued"]
    if not queued:
        return []
    online = {h["id"]: h.get("online") for h in api.get("/hosts")}
    notices = []
    for job in queued:
        if online.get(job["host_id"]):
            continue
        stops = [t for t in (job.get("expires_at"), job.get("not_after")) if t]
        until = short_time(min(stops, key=lambda t: datetime.fromisoformat(t)))
        notices.append(
            f"host {plain(job['hostname'])} is offline; the job waits as pending until {until}"
        )
    return notices


def poll(
    api: Api,
    job_id: str,
    after: int,
    wait: float = LONG_POLL_SECONDS,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Poll:
    """One long poll, retried with back-off while the platform cannot be reached."""
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            answer = api.get(f"{job_path(job_id)}/output", params={"after": after, "wait": wait})
        except Unreachable:
            if time.monotonic() + delay > deadline:
                raise
            sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        return Poll(answer["job"], answer["output"], answer["cursor"])


def wait_for_job(
    api: Api,
    job_id: str,
    on_output: OnOutput | None = None,
    *,
    on_poll: Callable[[Job], None] | None = None,
    wait: float = LONG_POLL_SECONDS,
) -> Job:
    """Follow one job to its end, handing each piece of output to `on_output` and the job as
    each poll sees it to `on_poll` (a progress bar polls with a short `wait`); returns the
    final job."""
    cursor = 0
    while True:
        answer = poll(api, job_id, cursor, wait)
        if on_poll is not None:
            on_poll(answer.job)
        if on_output is not None:
            for piece in answer.output:
                on_output(answer.job, piece)
        cursor = answer.cursor
        if answer.drained:
            return answer.job


def follow_jobs(
    api: Api,
    job_ids: list[str],
    on_output: OnOutput,
    on_end: Callable[[Job], None] | None = None,
) -> dict[str, Job]:
    """Follow several jobs at once; output is handed over in this thread as it arrives.

    The long polls run on daemon threads so that Ctrl-C (KeyboardInterrupt here) returns at once
    instead of waiting for polls in flight.
    """
    if not job_ids:
        return {}
    wait = LONG_POLL_SECONDS if len(job_ids) <= MAX_FOLLOWERS else 1.0
    work: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
    answers: queue.SimpleQueue[tuple[str, Poll | CliError]] = queue.SimpleQueue()

    def follower() -> None:
        while True:
            job_id, cursor = work.get()
            try:
                answers.put((job_id, poll(api, job_id, cursor, wait)))
            except CliError as exc:
                answers.put((job_id, exc))
            except Exception as exc:
                # A follower that died silently would leave its job unanswered and this
                # command waiting for ever: every failure comes back as an answer.
                answers.put((job_id, CliError(f"Following job {job_id} failed: {exc}.")))

    for _ in range(min(len(job_ids), MAX_FOLLOWERS)):
        threading.Thread(target=follower, name="tether-follow", daemon=True).start()
    for job_id in job_ids:
        work.put((job_id, 0))
    ended: dict[str, Job] = {}
    while len(ended) < len(job_ids):
        try:
            job_id, answer = answers.get(timeout=0.5)
        except queue.Empty:
            continue  # a timed wait keeps Ctrl-C responsive on every platform
        if isinstance(answer, CliError):
            raise answer
        for piece in answer.output:
            on_output(answer.job, piece)
        if answer.drained:
            ended[job_id] = answer.job
            if on_end is not None:
                on_end(answer.job)
        else:
            work.put((job_id, answer.cursor))
    return ended
