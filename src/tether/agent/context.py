"""What a running job's handler may use besides its arguments: output, rows, cancellation.

Handlers keep the plain `handler(args) -> result` shape; those that stream (scripts) or can stop
early ask for `job_context()`, which the job runner sets for the task running the job.
"""

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from tether.agent.isolation import Isolator
from tether.agent.journal import Journal, ScriptProcess
from tether.agent.transfer import AgentTransfers
from tether.protocol import MAX_OUTPUT_TEXT, JobOutput
from tether.protocol.messages import OutputStream

log = logging.getLogger("tether.agent.jobs")

Emit = Callable[[JobOutput], Awaitable[None]]


class JournaledProcesses:
    """A job's script process, journaled (a `tether.agent.scripts.ProcessRecorder`)."""

    def __init__(self, journal: Journal, job_id: str) -> None:
        self._journal = journal
        self._job_id = job_id

    def started(self, process: ScriptProcess) -> None:
        self._journal.record_process(self._job_id, process)

    def descendants(self, seen: dict[int, float]) -> None:
        try:
            self._journal.record_descendants(self._job_id, seen)
        except sqlite3.Error:
            # The run goes on: its group is still journaled, and its own kills still see these.
            log.exception("The journal could not record processes of job %s", self._job_id)

    def exited(self, exit_code: int) -> None:
        self._journal.record_exit(self._job_id, exit_code)


class JobContext:
    """One running job: numbered output, rows, and the analyst's request to stop."""

    def __init__(
        self,
        job_id: str,
        emit: Emit,
        transfers: AgentTransfers | None = None,
        isolator: Isolator | None = None,
        processes: JournaledProcesses | None = None,
    ) -> None:
        self.job_id = job_id
        # Where a script journals its child process (None for ephemeral jobs and unit tests).
        self.processes = processes
        # The agent's file transfers, for the actions that move files (None in unit tests).
        self.transfers = transfers
        # The agent's isolation, for the isolation actions (None in unit tests).
        self.isolator = isolator
        self.cancel = asyncio.Event()
        self._emit = emit
        self._seq = 0

    async def output(self, stream: OutputStream, text: str) -> None:
        """Send text on `stream`, split into pieces that each fit one message."""
        for start in range(0, len(text), MAX_OUTPUT_TEXT):
            await self._send(stream, text=text[start : start + MAX_OUTPUT_TEXT])

    async def row(self, fields: dict[str, Any]) -> None:
        """Send one structured result row (validated against the protocol's row model)."""
        await self._send("row", fields=fields)

    async def _send(
        self, stream: OutputStream, *, text: str | None = None, fields: dict[str, Any] | None = None
    ) -> None:
        message = JobOutput(
            job_id=self.job_id, seq=self._seq, stream=stream, text=text, fields=fields
        )
        self._seq += 1
        await self._emit(message)


current_job: ContextVar[JobContext | None] = ContextVar("current_job", default=None)


def job_context() -> JobContext:
    """The context of the job this task runs; RuntimeError outside a job."""
    context = current_job.get()
    if context is None:
        raise RuntimeError("No job is running in this task.")
    return context
