"""The agent's side of the job lifecycle: journal, acknowledge, run once, report until stored.

Every transition after `queued` is acknowledged to the platform: `delivered` once the job is in
the journal, `running` when its handler starts, then exactly one final state. Jobs outlive the
connection that brought them: a job keeps running through a reconnect, its output and final
status wait in the journal, and the next connection sends them again (DESIGN.md section 3).
They do not outlive the agent process: its next start ends them truthfully or, when they never
started, runs them once when the platform sends them again (`recovery`, docs/adr/0031).
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

from tether.agent import endings
from tether.agent.action import Handler, run_action
from tether.agent.context import JobContext, JournaledProcesses, current_job
from tether.agent.gate import ResponseGate
from tether.agent.isolation import Isolator
from tether.agent.journal import Journal
from tether.agent.recovery import recover
from tether.agent.transfer import AgentTransfers
from tether.protocol import (
    ACTIONS,
    ActionSpec,
    JobAck,
    JobCancel,
    JobOutput,
    JobRequest,
    JobStatus,
)

log = logging.getLogger("tether.agent.jobs")

Send = Callable[[str], Awaitable[None]]

# Jobs running at once on one endpoint; more wait, delivered, for a free slot.
MAX_CONCURRENT_JOBS = 8
# How long a handler gets to stop by itself after a cancel before its task is cancelled.
CANCEL_GRACE_SECONDS = 5.0

CANCELLED = "Cancelled at an analyst's request."
# Longer than the platform's longest time to live for a pending job (30 days).
JOURNAL_RETENTION = timedelta(days=31)


def _timed_out(seconds: float) -> str:
    return f"The job did not finish within its time limit of {seconds:g} s, so it was stopped."


class JobRunner:
    """Runs the jobs of one agent across all its connections."""

    def __init__(
        self,
        journal: Journal,
        handlers: Mapping[str, Handler],
        gate: ResponseGate,
        actions: Mapping[str, ActionSpec] = ACTIONS,
        transfers: AgentTransfers | None = None,
        isolator: Isolator | None = None,
        keep_running: frozenset[str] = frozenset(),
    ) -> None:
        self._journal = journal
        self._transfers = transfers
        self._isolator = isolator
        # Kept as given (not copied): the agent's handlers import their modules on first use.
        self._handlers = handlers
        self._gate = gate
        self._actions = actions
        self._send: Send | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._contexts: dict[str, JobContext] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_JOBS)
        # Acknowledged job ids are kept only as long as the platform could send a job again
        # (its longest time to live); after that they are forgotten.
        recovered = recover(journal, keep=keep_running)
        if recovered.ended or recovered.waiting or recovered.killed:
            log.warning(
                "The last agent process stopped with jobs unfinished: %d ended, %d to run when "
                "the platform sends them again, %d leftover script processes killed",
                recovered.ended,
                recovered.waiting,
                recovered.killed,
            )
        if recovered.partials_removed:
            log.warning(
                "Removed the partly received files of %d interrupted jobs",
                recovered.partials_removed,
            )
        journal.purge(JOURNAL_RETENTION)

    async def attach(self, send: Send) -> None:
        """A connection is up: send everything the platform has not confirmed yet."""
        self._send = send
        for job_id in list(self._contexts):
            for message in self._journal.output_of(job_id):
                await self._deliver(message.model_dump_json())
        for status in self._journal.unacknowledged():
            for message in self._journal.output_of(status.job_id):
                await self._deliver(message.model_dump_json())
            await self._deliver(status.model_dump_json())

    def detach(self) -> None:
        self._send = None

    async def _deliver(self, text: str) -> None:
        # Nothing is lost when this fails: the journal holds it for the next connection.
        send = self._send
        if send is not None:
            await send(text)

    async def _status(self, status: JobStatus) -> None:
        await self._deliver(status.model_dump_json())

    async def _emit(self, message: JobOutput) -> None:
        self._journal.add_output(message)
        await self._deliver(message.model_dump_json())

    async def on_job(self, job: JobRequest) -> None:
        if job.ephemeral:
            await self._run_ephemeral(job)
            return
        known = self._journal.get(job.job_id)
        if known is not None:
            await self._on_known_job(job, known.state, known.status)
            return
        if not self._journal.receive(job.job_id, job.action):
            return
        await self._status(JobStatus(job_id=job.job_id, state="delivered"))
        if job.not_after is not None and datetime.now(UTC) > job.not_after:
            stale = JobStatus(
                job_id=job.job_id,
                state="failed",
                error=(
                    f"The job arrived after its not-after time "
                    f"({job.not_after.isoformat(timespec='seconds')}), so it was not run."
                ),
            )
            await self._status(self._journal.finish(stale))
            return
        self._start(job)

    async def _on_known_job(self, job: JobRequest, state: str, status: JobStatus | None) -> None:
        """A resend after a reconnect: answer with what this agent knows, never run it twice."""
        if status is not None:
            for message in self._journal.output_of(job.job_id):
                await self._deliver(message.model_dump_json())
            await self._status(status)
            return
        if state == "delivered" and job.job_id not in self._tasks:
            # Journaled by an earlier agent process that stopped before starting it: it runs
            # now, once (set_running lets only one start through), unless it is too late.
            if job.not_after is not None and datetime.now(UTC) > job.not_after:
                late = JobStatus(
                    job_id=job.job_id,
                    state="failed",
                    error=endings.not_started_late(job.not_after),
                )
                await self._status(self._journal.finish(late))
                return
            self._start(job)
            return
        if state in {"delivered", "running"}:
            await self._status(JobStatus(job_id=job.job_id, state=state))

    def _start(self, job: JobRequest) -> None:
        context = JobContext(
            job.job_id,
            self._emit,
            self._transfers,
            self._isolator,
            JournaledProcesses(self._journal, job.job_id),
        )
        self._contexts[job.job_id] = context
        task = asyncio.create_task(self._execute(job, context), name=f"job {job.job_id}")
        self._tasks[job.job_id] = task
        task.add_done_callback(lambda _t: self._forget(job.job_id))

    def _forget(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._contexts.pop(job_id, None)

    async def _run_ephemeral(self, job: JobRequest) -> None:
        spec = self._actions.get(job.action)
        if spec is not None and spec.response:
            status = JobStatus(
                job_id=job.job_id,
                state="failed",
                error=f"{job.action} is a response action and only runs as a recorded job.",
            )
        else:
            # Ephemeral jobs report only their status: output they might emit is dropped.
            async def drop(_message: JobOutput) -> None:
                return None

            context = JobContext(job.job_id, drop, self._transfers, self._isolator)
            token = current_job.set(context)
            try:
                status = await run_action(job, self._handlers, self._gate, self._actions)
            finally:
                current_job.reset(token)
        await self._status(status)

    def _timeout_of(self, job: JobRequest) -> float:
        if job.timeout_seconds is not None:
            return job.timeout_seconds
        spec = self._actions.get(job.action)
        return spec.timeout_seconds if spec is not None else 60.0

    async def _execute(self, job: JobRequest, context: JobContext) -> None:
        current_job.set(context)
        async with self._slots:
            if not self._journal.set_running(job.job_id):
                return  # cancelled while it waited for a slot
            await self._status(JobStatus(job_id=job.job_id, state="running"))
            timeout = self._timeout_of(job)
            try:
                async with asyncio.timeout(timeout):
                    status = await run_action(job, self._handlers, self._gate, self._actions)
            except TimeoutError:
                status = JobStatus(job_id=job.job_id, state="timed_out", error=_timed_out(timeout))
            except asyncio.CancelledError:
                if not context.cancel.is_set():
                    raise  # the agent is stopping: the next start reports the job interrupted
                status = JobStatus(job_id=job.job_id, state="cancelled", error=CANCELLED)
            else:
                if context.cancel.is_set():
                    status = JobStatus(job_id=job.job_id, state="cancelled", error=CANCELLED)
        if status.state == "failed":
            # Refusals included: the endpoint's own log shows what it would not run, and why.
            log.warning("Job %s (%s) failed: %s", job.job_id, job.action, status.error)
        await self._status(self._journal.finish(status))

    async def on_cancel(self, message: JobCancel) -> None:
        context = self._contexts.get(message.job_id)
        task = self._tasks.get(message.job_id)
        if context is not None and task is not None:
            context.cancel.set()
            asyncio.get_running_loop().call_later(CANCEL_GRACE_SECONDS, task.cancel)
            known = self._journal.get(message.job_id)
            if known is not None and known.state == "delivered":
                # Still waiting for a slot: it ends here and never starts.
                cancelled = JobStatus(job_id=message.job_id, state="cancelled", error=CANCELLED)
                await self._status(self._journal.finish(cancelled))
            return
        known = self._journal.get(message.job_id)
        if known is not None and known.status is not None:
            await self._status(known.status)
            return
        # Unknown here (or left by a previous agent process): journal it as cancelled so a
        # delivery still in flight can never start it.
        cancelled = JobStatus(job_id=message.job_id, state="cancelled", error=CANCELLED)
        await self._status(self._journal.finish(cancelled))

    def on_ack(self, message: JobAck) -> None:
        self._journal.acknowledge(list(message.job_ids))

    async def keep_alive(self) -> None:
        """While jobs run, journal every `ALIVE_SECONDS` that the agent is alive, so that after a
        crash their endings can say when the agent stopped; runs until cancelled."""
        while True:
            if self._tasks:
                self._journal.mark_alive()
            await asyncio.sleep(endings.ALIVE_SECONDS)

    async def stop(self) -> None:
        """Cancel every running job (the agent is stopping); the journal keeps them running, and
        the next start ends them as a stopped agent's (their script processes are killed here)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if tasks:
            self._journal.mark_alive()
