"""The bus of a single platform process (`--role all`): a publish is a direct call."""

import asyncio
from collections.abc import Callable, Sequence

from tether.server.services.bus import Bus, Topic


class LocalBus(Bus):
    """Calls the subscribers in the publisher's task, in order, and lets their errors through:
    the same as the direct calls the bus stands in for, so one process behaves as before."""

    async def publish(self, topic: Topic, ids: Sequence[str]) -> None:
        wanted = tuple(ids)
        for handler in self.handlers(topic):
            await handler(wanted)

    def hint(self, topic: Topic, ident: str) -> None:
        # Hints are for other processes; this one already acted on it.
        return None

    async def ask(
        self,
        topic: Topic,
        ids: Sequence[str],
        *,
        timeout: float,
        enough: Callable[[list[str]], bool],
    ) -> list[str]:
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            for responder in self.responders(topic):
                lines += await responder(tuple(ids))
                if enough(lines):
                    break
        return lines
