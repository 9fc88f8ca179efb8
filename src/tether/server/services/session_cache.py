"""What authentication read for a session, kept for a few seconds (docs/adr/0053).

Every API request and page authenticates its session: the session row, the account, its roles
and the platform's access settings, four queries before the request does anything. This keeps
what they said for `ttl` seconds. Whatever can take access away (logout, a session ended,
an account disabled, a role or tier changed, a second factor reset or enrolled, a step-up, the
access settings) forgets the user's entries at once in this process and tells the other
processes over the bus; the TTL bounds how long a process that missed the message (a lost bus
message, a change written by another command such as `tether server break-glass`) can still
admit the old session.

A read that began before a change and finishes after it must not put what it read back in the
cache: every change bumps a generation, and `put` refuses an entry read under an older one.
"""

import time
from collections.abc import Callable
from typing import Generic, TypeVar

Entry = TypeVar("Entry")

# Seconds an entry is trusted; also the longest a missed invalidation can go unnoticed.
DEFAULT_TTL_SECONDS = 2.0
# Entries kept at most; past that the cache starts over (a flood of distinct valid sessions is
# bounded by the sessions that exist, but memory should not follow them).
MAX_ENTRIES = 10_000


class SessionCache(Generic[Entry]):
    """Session token digest -> what authentication read (an `Entry`), for `ttl` seconds."""

    def __init__(
        self, ttl: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, int, Entry]] = {}
        self.generation = 0

    def get(self, digest: str) -> Entry | None:
        """The entry for `digest` if it is younger than the TTL."""
        found = self._entries.get(digest)
        if found is None:
            return None
        stored_at, _, entry = found
        if self._clock() - stored_at >= self.ttl:
            del self._entries[digest]
            return None
        return entry

    def put(self, digest: str, user_id: int, entry: Entry, generation: int) -> None:
        """Keep `entry` (of `user_id`'s session), read when the generation was `generation`, unless anything changed
        since (then the next request reads again)."""
        if self.ttl <= 0 or generation != self.generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (self._clock(), user_id, entry)

    def forget_user(self, user_id: int) -> None:
        """Drop every entry of `user_id` (and refuse reads already under way)."""
        self.generation += 1
        for digest in [d for d, (_, owner, _) in self._entries.items() if owner == user_id]:
            del self._entries[digest]

    def forget_all(self) -> None:
        """Drop everything (a platform-wide setting changed)."""
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
