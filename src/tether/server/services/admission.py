"""Admission control on the agent port: shed new connections while too many handshakes are open.

After a restart every agent comes back at once. A TLS handshake costs the platform about 1.2 ms
of CPU and the WebSocket upgrade and hello about as much again; when connections arrive faster
than that, half-done handshakes pile up, each one slower than the last, until agents give up
after their 15 s open timeout, often after the platform had done their handshake for nothing
(docs/performance.md). So a connection that arrives while `limit` others are between TCP accept
and the start of their session is closed at once, before any TLS byte is read: it costs an
accept and a close. The agent takes a close before the TLS handshake as "busy, come back soon"
and retries after a short jitter without growing its backoff (docs/adr/0049).
"""

from dataclasses import dataclass, field
from typing import Protocol

# Connections between accept and the start of their session (TLS handshake, WebSocket upgrade)
# a process lets in at once. This machine completes about 480 agent handshakes a second, so 500
# in flight is about a second of work queued: enough to keep the core busy while clients think,
# well short of the agent's 15 s open timeout.
DEFAULT_HANDSHAKE_LIMIT = 500


class Pending(Protocol):
    """A connection between accept and the start of its session."""

    def abort_handshake(self) -> None: ...


@dataclass
class Admission:
    """The connections in their handshake; `limit` 0 admits everything."""

    limit: int = DEFAULT_HANDSHAKE_LIMIT
    # Connections closed unread because the limit was reached, since the process started.
    shed: int = 0
    admitted: int = 0
    _pending: set[Pending] = field(default_factory=set)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def admit(self, connection: Pending) -> bool:
        """Take a place for a new connection, or count it shed and return False."""
        if self.limit > 0 and len(self._pending) >= self.limit:
            self.shed += 1
            return False
        self._pending.add(connection)
        self.admitted += 1
        return True

    def release(self, connection: Pending) -> None:
        """Give back the place of a connection whose handshake ended (either way)."""
        self._pending.discard(connection)

    def abort_all(self) -> int:
        """Drop every connection still in its handshake (the platform is stopping): they
        would only hold the process up. Returns how many were dropped."""
        pending = list(self._pending)
        self._pending.clear()
        for connection in pending:
            connection.abort_handshake()
        return len(pending)
