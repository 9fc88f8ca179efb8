"""Actions about the agent itself."""

from tether.protocol import NoopArgs, NoopResult


async def noop(args: NoopArgs) -> NoopResult:
    """Touch nothing; echo the token back so the caller can match the answer."""
    return NoopResult(echo=args.echo)
