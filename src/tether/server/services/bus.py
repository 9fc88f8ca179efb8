"""Wake-ups between platform processes (DESIGN.md section 1, docs/adr/0044).

A message names a topic and the ids it is about ("jobs 1, 2 are ready", "job 7 changed", "host H
was revoked"); it never carries the state itself. Whoever receives one reads the truth from the
database, so a lost message delays an effect and never loses it: each receiver also re-reads on
its own schedule (the job sweeper, the revocation sweep) and after a reconnect to the bus.

`LocalBus` (buses/local.py) is the single process of `--role all`: a publish calls the
subscribers at once, in the caller's task, exactly as the direct calls it replaces did.
`RedisBus` (buses/redis.py) carries them between the processes of a split platform.
"""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum


class Topic(StrEnum):
    """What a wake-up is about; its ids say which."""

    # Job ids freshly queued: the process holding their host's connection sends them.
    JOBS_READY = "jobs.ready"
    # Job ids whose cancellation was asked: the process holding the host tells the agent.
    JOBS_CANCEL = "jobs.cancel"
    # Job ids with new output or a new state: whoever follows them re-reads.
    JOBS_CHANGED = "jobs.changed"
    # Host ids revoked: the process holding the connection closes it.
    HOSTS_REVOKED = "hosts.revoked"
    # Host ids whose policy changed (segment, switch); no ids means every host.
    POLICY_CHANGED = "policy.changed"
    # User ids whose account, roles or sessions changed ("*": every user's, a platform-wide
    # access setting): every process forgets what it cached of their sessions (ADR 0053).
    SESSIONS_CHANGED = "sessions.changed"
    # A question (`ask`), not a wake-up: the time limit, then host ids to send the no-op to;
    # each process answers for the hosts it holds ("host TAB ms" or "host TAB TAB reason").
    PING = "hosts.ping"


Handler = Callable[[tuple[str, ...]], Awaitable[object]]
Responder = Callable[[tuple[str, ...]], Awaitable[list[str]]]
Resync = Callable[[], Awaitable[None]]


class Bus(ABC):
    """Carries wake-ups to the subscribers of a topic, in this process or others."""

    def __init__(self) -> None:
        self._handlers: dict[Topic, list[Handler]] = {}
        self._responders: dict[Topic, list[Responder]] = {}
        self._resyncs: list[Resync] = []

    def subscribe(self, topic: Topic, handler: Handler) -> None:
        """Call `handler(ids)` for every wake-up on `topic` (one handler may see an id twice)."""
        self._handlers.setdefault(topic, []).append(handler)

    def respond(self, topic: Topic, responder: Responder) -> None:
        """Answer `ask`s on `topic` with `responder(ids)`'s lines (none: nothing to say)."""
        self._responders.setdefault(topic, []).append(responder)

    def responders(self, topic: Topic) -> list[Responder]:
        return list(self._responders.get(topic, ()))

    @abstractmethod
    async def ask(
        self,
        topic: Topic,
        ids: Sequence[str],
        *,
        timeout: float,
        enough: Callable[[list[str]], bool],
    ) -> list[str]:
        """Ask every process's responders and gather their lines until `enough(lines)` or
        `timeout` seconds; what did not answer in time is simply absent."""

    def on_resync(self, handler: Resync) -> None:
        """Call `handler()` whenever wake-ups may have been missed (after the bus reconnects), so
        the process re-reads the database for what they would have said."""
        self._resyncs.append(handler)

    def handlers(self, topic: Topic) -> list[Handler]:
        return list(self._handlers.get(topic, ()))

    @abstractmethod
    async def publish(self, topic: Topic, ids: Sequence[str]) -> None:
        """Wake the subscribers of `topic` about `ids`. Across processes it is best effort: a
        bus that is down is logged, not raised, because the database already holds the change."""

    @abstractmethod
    def hint(self, topic: Topic, ident: str) -> None:
        """Like `publish` without waiting, for wake-ups the caller already gave its own process
        (job output followers): coalesced and sent soon to the other processes only."""

    async def start(self) -> None:
        """Connect and begin receiving (nothing to do in one process)."""
        return None

    async def close(self) -> None:
        """Stop receiving and release the connection."""
        return None

    @property
    def spans_processes(self) -> bool:
        """True when other platform processes hear this bus's messages."""
        return False

    async def _resync(self) -> None:
        for handler in self._resyncs:
            await handler()
