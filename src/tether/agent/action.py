"""How the agent runs an action: validate arguments against the declaration, call the handler.

Handlers live in `tether.agent.actions`; each returns the declared result model. Every exception
becomes a failed status with a message, never a dead connection (GRR's boundary rule).
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from tether.agent.gate import ResponseGate
from tether.protocol import ACTIONS, ActionSpec, JobRequest, JobStatus

# A handler receives an instance of its action's declared argument model (validated here first)
# and returns an instance of the declared result model.
Handler = Callable[[Any], Awaitable[BaseModel]]


async def run_action(
    job: JobRequest,
    handlers: dict[str, Handler],
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
    except Exception as exc:
        return JobStatus(job_id=job.job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
    if not isinstance(result, spec.result):
        return JobStatus(
            job_id=job.job_id,
            state="failed",
            error=f"The {job.action} handler returned {type(result).__name__}, not its declared result.",
        )
    return JobStatus(job_id=job.job_id, state="succeeded", result=result.model_dump(mode="json"))
