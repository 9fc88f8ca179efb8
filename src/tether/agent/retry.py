"""When the agent tries the platform again, and at which of its addresses (docs/adr/0049).

Three kinds of endings call for three schedules:

- **Going away** (close 1001: the platform is stopping or restarting; or a session that ended
  with no close frame at all, as the sessions a stopping platform aborts, or a dead node's, do).
  Every agent of the node
  hears it in the same second, so each comes back at a random moment of a window
  (`GOING_AWAY_WINDOW`) instead of all at once; refusals for a while after it
  (`RESTART_GRACE`) are the restart itself and are retried on the short busy schedule, never
  on a growing backoff that would keep agents away long after the new process listens.
- **Busy** (the platform closed the connection before the TLS handshake: admission control shed
  it, or it answered 503). The platform is alive; come back soon, at a random moment of
  `BUSY_RETRY` (a window that widens by 5 s with each busy answer in a row, up to 30 s), without
  growing the backoff. A load balancer with no live node looks the same
  (it accepts, then closes), so after `MAX_BUSY_IN_A_ROW` of those they count as failures.
- **Failure** (refused, timed out, a TLS or protocol error). Exponential backoff with full
  jitter, as before: what keeps a fleet from hammering a platform that is really down.

With several addresses the agent tries them in a random order (each agent its own), moving on
to the next after a short jitter when one refuses, sheds or dies; the backoff grows only when a
whole round of the list has failed.
"""

import enum
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Seconds over which a node's agents spread their return after "going away". One process here
# completes about 480 handshakes a second, so 10,000 agents need about 21 s whatever the
# window; 10 s keeps the arrival rate (1,000/s) within what admission control sheds cheaply,
# and the restart itself (2 s to stop, 2-4 s to start) falls inside it.
GOING_AWAY_WINDOW = 10.0
# Seconds (low, high) before trying again after a shed, or a refusal during a restart; the
# high end grows with each busy answer in a row, up to BUSY_RETRY_CEILING.
BUSY_RETRY = (1.0, 5.0)
BUSY_RETRY_CEILING = 30.0
# For how long after "going away" a refused or failed attempt is taken as the restart.
RESTART_GRACE = 60.0
# Busy answers in a row after which they count as failures (a balancer with no live node).
MAX_BUSY_IN_A_ROW = 20
# At most this many seconds before trying the next address of a round.
NEXT_ADDRESS_JITTER = 1.0


class Ending(enum.Enum):
    """How a connection attempt or session ended, as far as the retry schedule cares."""

    # A session that reached welcome ended with another close code (idle, replaced...).
    LOST = "lost"
    # The platform said it is going away (close 1001), or the session ended without a close.
    GOING_AWAY = "going away"
    # Closed before the TLS handshake (shed), or an HTTP 503: the platform is busy.
    BUSY = "busy"
    # Anything else before a welcome.
    FAILED = "failed"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, so a restarted platform is not hit all at once."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        try:
            ceiling = min(self.maximum, self.initial * self.factor ** max(attempt, 0))
        except OverflowError:
            # After ~1000 failed attempts (hours of outage) the power leaves the float range.
            ceiling = self.maximum
        return ceiling * (0.5 + rng() / 2)


class RetrySchedule:
    """The delay before the next attempt, from how the last one ended."""

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        window: float = GOING_AWAY_WINDOW,
        busy: tuple[float, float] = BUSY_RETRY,
        restart_grace: float = RESTART_GRACE,
        max_busy_in_a_row: int = MAX_BUSY_IN_A_ROW,
        next_address_jitter: float = NEXT_ADDRESS_JITTER,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.window = window
        self.busy = busy
        self.restart_grace = restart_grace
        self.max_busy_in_a_row = max_busy_in_a_row
        self.next_address_jitter = next_address_jitter
        self._clock = clock
        self._rng = rng
        # Rounds of the address list that failed in a row: the backoff's exponent.
        self.failures = 0
        self._busy_in_a_row = 0
        self._restart_until = -1.0

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._rng()

    def next_delay(self, ending: Ending, *, round_over: bool = True) -> float:
        """Seconds to wait before the next attempt; `round_over` says whether every address
        of the list has been tried since the last success (with one address, always)."""
        if ending is Ending.GOING_AWAY:
            self.failures = 0
            self._busy_in_a_row = 0
            self._restart_until = self._clock() + self.restart_grace
            return self._uniform(0.0, self.window)
        if ending is Ending.LOST:
            self.failures = 0
            self._busy_in_a_row = 0
            return self.backoff.delay(0, self._rng)
        if ending is Ending.BUSY:
            self._busy_in_a_row += 1
            if self._busy_in_a_row <= self.max_busy_in_a_row:
                return self._busy_or_next(round_over)
        elif self._clock() < self._restart_until:
            # Refused or failed while the platform restarts: not a reason to stay away longer.
            return self._busy_or_next(round_over)
        if not round_over:
            return self._uniform(0.0, self.next_address_jitter)
        delay = self.backoff.delay(self.failures, self._rng)
        self.failures += 1
        return delay

    def _busy_or_next(self, round_over: bool) -> float:
        if not round_over:
            return self._uniform(0.0, self.next_address_jitter)
        low, high = self.busy
        # The window widens with each busy answer in a row (1-5 s, 1-10 s, ... up to 1-30 s):
        # a fleet far larger than what the node admits a second would otherwise spend its
        # time, and the node's accepts, knocking (measured: docs/performance.md).
        widened = min(high * max(self._busy_in_a_row, 1), BUSY_RETRY_CEILING)
        return self._uniform(low, max(widened, high))

    def welcomed(self) -> None:
        """A session reached welcome: whatever failed before is forgotten."""
        self.failures = 0
        self._busy_in_a_row = 0


class AddressRotation:
    """The platform's agent addresses in a random order of this agent's own, one at a time.

    `current` is the address to try; `move_on` goes to the next and says whether that started a
    new round (every address tried since the last success). A new list (from a welcome) takes
    effect at the next round, so the address in use is not dropped mid-session.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        rng: random.Random | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("An agent needs at least one platform address.")
        self._rng = rng or random.Random()
        self._addresses = list(dict.fromkeys(addresses))
        self._order = self._shuffled()
        self._index = 0
        self._tried = 0

    def _shuffled(self) -> list[str]:
        order = list(self._addresses)
        self._rng.shuffle(order)
        return order

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self._addresses)

    @property
    def current(self) -> str:
        return self._order[self._index]

    def replace(self, addresses: Sequence[str]) -> bool:
        """Adopt a new list (deduplicated, order kept); True if it differs from the one held."""
        unique = list(dict.fromkeys(addresses))
        if not unique or unique == self._addresses:
            return False
        self._addresses = unique
        return True

    def start_round(self) -> None:
        """Begin a fresh round in a new random order (after a session ended: the node that
        went away is no likelier than any other to be the first one tried)."""
        self._order = self._shuffled()
        self._index = 0
        self._tried = 0

    def move_on(self) -> bool:
        """Go to the next address after a failed attempt; True when that attempt ended a round
        (every address tried since the last session), and a new random order begins."""
        self._tried += 1
        round_over = self._tried >= len(self._order)
        if round_over or sorted(self._order) != sorted(self._addresses):
            self.start_round()
            return round_over
        self._index += 1
        return False
