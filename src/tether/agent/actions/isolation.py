"""isolation.isolate, isolation.release, isolation.status: the agent's Isolator, per job."""

from tether.agent.context import job_context
from tether.agent.errors import ActionError
from tether.agent.isolation import Isolator
from tether.protocol.isolation import IsolateArgs, IsolationStatus, ReleaseArgs


def _isolator() -> Isolator:
    isolator = job_context().isolator
    if isolator is None:
        raise ActionError("Isolation is not available in this agent.")
    return isolator


async def isolate(args: IsolateArgs) -> IsolationStatus:
    return await _isolator().isolate(args.mode, args.allow)


async def release(args: ReleaseArgs) -> IsolationStatus:
    return await _isolator().release()


async def status(args: ReleaseArgs) -> IsolationStatus:
    return await _isolator().status()
