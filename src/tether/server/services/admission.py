"""Admission control on the agent port: shed new connections while too many handshakes are open.

After a restart every agent comes back at once. A TLS handshake costs the platform about 1.2 ms
of CPU and the WebSocket upgrade and hello about as much again; when connections arrive faster
than that, half-done handshakes pile up, each one slower than the last, until agents give up
after their 15 s open timeout, often after the platform had done their handshake for nothing
(docs/performance.md). So a connection that arrives while the limit's worth of others are between TCP
accept and the start of their session is closed at once, before any TLS byte is read: it costs an
accept and a close. The agent takes a close before the TLS handshake as "busy, come back soon"
and retries after a short jitter without growing its backoff (docs/adr/0049).
"""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# The most connections a process lets into their handshake at once (setting
# `agent_handshake_limit`). This machine completes about 480 agent handshakes a second, so 500 in
# flight is about a second of work queued.
DEFAULT_HANDSHAKE_LIMIT = 500
# Below the ceiling, the limit follows the rate handshakes complete at: enough for this many
# seconds of them. Handshakes in flight share the process's CPU, so each takes about
# (in flight / rate) seconds; a fixed 500 on a machine that completes 30 a second would make
# every one of them take 16 s, past the agent's 15 s open timeout, and none would complete
# (measured: docs/performance.md). Two seconds keeps well within the timeout.
TARGET_SECONDS = 2.0
# The limit never falls below this, so a quiet process (nothing completing, nothing to measure)
# still admits a burst.
MIN_LIMIT = 32
# Completions are counted over this many seconds.
RATE_WINDOW = 2.0


class Pending(Protocol):
    """A connection between accept and the start of its session."""

    def abort_handshake(self) -> None: ...


@dataclass
class Admission:
    """The connections in their handshake; `limit` is the ceiling, 0 admits everything."""

    limit: int = DEFAULT_HANDSHAKE_LIMIT
    # Connections closed unread because the limit was reached, since the process started.
    shed: int = 0
    admitted: int = 0
    clock: Callable[[], float] = time.monotonic
    _pending: set[Pending] = field(default_factory=set)
    # When recent handshakes completed (within RATE_WINDOW), oldest first.
    _completed: deque[float] = field(default_factory=deque)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def current_limit(self) -> int:
        """How many may be in their handshake now: the completion rate times TARGET_SECONDS,
        between MIN_LIMIT and `limit`."""
        horizon = self.clock() - RATE_WINDOW
        completed = self._completed
        while completed and completed[0] < horizon:
            completed.popleft()
        rate = len(completed) / RATE_WINDOW
        return max(min(MIN_LIMIT, self.limit), min(self.limit, int(rate * TARGET_SECONDS)))

    def admit(self, connection: Pending) -> bool:
        """Take a place for a new connection, or count it shed and return False."""
        if self.limit > 0 and len(self._pending) >= self.current_limit():
            self.shed += 1
            return False
        self._pending.add(connection)
        self.admitted += 1
        return True

    def release(self, connection: Pending, *, completed: bool = False) -> None:
        """Give back the place of a connection whose handshake ended; `completed` when it
        reached its session (a failed or timed-out handshake does not raise the rate)."""
        if connection in self._pending:
            self._pending.discard(connection)
            if completed:
                self._completed.append(self.clock())

    def abort_all(self) -> int:
        """Drop every connection still in its handshake (the platform is stopping): they
        would only hold the process up. Returns how many were dropped."""
        pending = list(self._pending)
        self._pending.clear()
        for connection in pending:
            connection.abort_handshake()
        return len(pending)
