"""Actions about the agent itself."""

from pydantic import BaseModel

from tether.protocol import NoopArgs, NoopResult


async def noop(args: BaseModel) -> BaseModel:
    assert isinstance(args, NoopArgs)
    return NoopResult(echo=args.echo)
