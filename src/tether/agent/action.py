"""How the agent runs an action: validate arguments against the declaration, call the handler.

Handlers live in `tether.agent.actions`; each returns the declared result model. Every exception
becomes a failed status with a message, never a dead connection (GRR's boundary rule): an
ActionError's sentence as it is, anything else prefixed with its type name so a bug reads as one.
"""

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tether.agent.errors import ActionError
from tether.agent.gate import ResponseGate
from tether.protocol import (
    ACTIONS,
    MAX_FRAME_BYTES,
    MAX_RESULT_BYTES,
    ActionSpec,
    JobRequest,
    JobStatus,
    clip,
)

# A handler receives an instance of its action's declared argument model (validated here first)
# and returns an instance of the declared result model.
Handler = Callable[[Any], Awaitable[BaseModel]]

# JobStatus.error holds at most this many characters; a longer message would make the status
# itself invalid and lose the failure.
MAX_ERROR_CHARS = 4096


class ResultBudget:
    """Counts the JSON bytes of the entries a listing adds, so the result fits one frame.

    A handler asks `fits(entry)` before appending; once an entry does not fit, the listing stops
    and says it was truncated.
    """

    def __init__(self, limit: int = MAX_RESULT_BYTES) -> None:
        self.remaining = limit

    def fits(self, entry: BaseModel) -> bool:
        """Whether `entry` fits in what is left; if it does, its size is counted as spent."""
        # The comma that separates it from the next entry counts too.
        size = len(entry.model_dump_json().encode()) + 1
        if size > self.remaining:
            self.remaining = 0
            return False
        self.remaining -= size
        return True


T = TypeVar("T")


async def run_blocking(work: Callable[[threading.Event], T]) -> T:
    """Run `work(stop)` in a worker thread so the connection keeps serving meanwhile.

    `stop` is set once the awaiting task is done, also when the job is cancelled or times out:
    a thread cannot be cancelled, so long work checks `stop` and ends instead of running unseen.
    """
    stop = threading.Event()
    try:
        return await asyncio.to_thread(work, stop)
    finally:
        stop.set()


def _failed(job: JobRequest, error: str) -> JobStatus:
    return JobStatus(job_id=job.job_id, state="failed", error=clip(error, MAX_ERROR_CHARS))


async def run_action(
    job: JobRequest,
    handlers: Mapping[str, Handler],
    gate: ResponseGate | None = None,
    actions: Mapping[str, ActionSpec] = ACTIONS,
) -> JobStatus:
    """Run one job; a response action is refused unless `gate` allows it (no gate: refused)."""
    spec = actions.get(job.action)
    handler = handlers.get(job.action)
    if spec is None or handler is None:
        return JobStatus(
            job_id=job.job_id,
            state="failed",
            error=f"This agent does not know the action {job.action!r}.",
        )
    refusal = (gate or ResponseGate()).refusal(spec)
    if refusal is not None:
        return JobStatus(job_id=job.job_id, state="failed", error=refusal)
    try:
        args = spec.args.model_validate(job.args)
    except ValidationError as exc:
        return JobStatus(
            job_id=job.job_id,
            state="failed",
            error=f"Invalid arguments for {job.action}: {exc.errors()[0]['msg']}.",
        )
    try:
        result = await handler(args)
    except ActionError as exc:
        return _failed(job, str(exc))
    except Exception as exc:
        return _failed(job, f"{type(exc).__name__}: {exc}")
    if not isinstance(result, spec.result):
        return JobStatus(
            job_id=job.job_id,
            state="failed",
            error=f"The {job.action} handler returned {type(result).__name__}, not its declared result.",
        )
    status = JobStatus(job_id=job.job_id, state="succeeded", result=result.model_dump(mode="json"))
    # The platform closes a connection that sends an oversized frame; a failed job is better.
    size = len(status.model_dump_json().encode())
    if size > MAX_FRAME_BYTES:
        return _failed(
            job,
            f"The {job.action} result is {size} bytes, over the {MAX_FRAME_BYTES}-byte frame limit; ask for less.",
        )
    return status
