import random

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from tether.agent.connection import AgentConnection, Backoff
from tether.agent.errors import AgentRefused
from tether.protocol import CloseCode


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, factor=2.0)
    top = [backoff.delay(n, rng=lambda: 1.0) for n in range(9)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    low = [backoff.delay(n, rng=lambda: 0.0) for n in range(4)]
    assert low == [0.5, 1.0, 2.0, 4.0]


def test_backoff_jitter_stays_within_half_and_full_ceiling() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, factor=3.0)
    rng = random.Random(1234)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 3.0**attempt)
        delays = [backoff.delay(attempt, rng=rng.random) for _ in range(200)]
        assert all(0.5 * ceiling <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > 0.3 * ceiling  # actually spread, not constant


def test_backoff_survives_a_very_long_outage() -> None:
    # Thousands of failed attempts must not overflow the float power and kill the agent.
    delay = Backoff().delay(100_000, rng=lambda: 0.5)
    assert delay == pytest.approx(45.0)


def test_negative_attempt_is_treated_as_the_first() -> None:
    assert Backoff().delay(-3, rng=lambda: 1.0) == 1.0


def closed(code: int, reason: str) -> ConnectionClosed:
    return ConnectionClosed(Close(code, reason), None)


@pytest.mark.parametrize("code", [c for c in CloseCode if c.is_final])
def test_final_close_codes_stop_the_agent(code: CloseCode) -> None:
    with pytest.raises(AgentRefused, match="refused this agent: why not"):
        AgentConnection._raise_if_final(closed(int(code), "why not"))


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 4000, 4005, 4006, 4999])
def test_other_close_codes_let_it_reconnect(code: int) -> None:
    AgentConnection._raise_if_final(closed(code, "x"))
    AgentConnection._raise_if_final(ConnectionClosed(None, None))
