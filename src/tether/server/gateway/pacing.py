"""How fast one agent connection may send control messages.

Every JSON message from an agent costs the platform a parse and, for most types, a database
read or write. A compromised endpoint controls what it sends, so each connection gets a token
bucket: bursts pass, and past the budget the gateway waits before reading the next frame. That
is back-pressure through TCP, not a disconnect, so a legitimately chatty script only slows down.
File data (binary frames) is paced by the transfer window instead and does not count here.
"""

import time
from collections.abc import Awaitable, Callable

# Sized from above the busiest honest agent: a script printing as fast as it can produces a few
# hundred output pieces a second (64 KiB reads), and a reconnect replays at most a few thousand
# results and outputs at once.
MESSAGES_PER_SECOND = 500.0
BURST = 5000.0
# Isolation reports an agent may send a minute (each becomes an audit record); a real endpoint
# sends one per change, and changes come from people and scripts, not loops.
REPORTS_PER_MINUTE = 10.0


class Pacing:
    def __init__(
        self,
        rate: float = MESSAGES_PER_SECOND,
        burst: float = BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._last = clock()

    def delay(self) -> float:
        """Spend one message; how long to wait before reading the next one (0 within budget)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def spend(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        wait = self.delay()
        if wait > 0:
            await sleep(wait)
