"""The bus of a single platform process (`--role all`): a publish is a direct call."""

from collections.abc import Sequence

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
