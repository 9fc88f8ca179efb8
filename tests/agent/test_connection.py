import asyncio
import random

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from tether.agent.connection import AgentConnection, asked_to_wait
from tether.agent.errors import AgentRefused
from tether.agent.retry import Backoff
from tether.protocol import CloseCode, retry_reason


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


async def closed_by_a_server(code: int, reason: str) -> ClientConnection:
    """A real client connection that a real local server closed with `code` and `reason`."""

    async def close_it(ws: ServerConnection) -> None:
        await ws.close(code, reason)

    async with serve(close_it, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", proxy=None)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await ws.recv()
        return ws


async def test_an_agent_sent_away_for_overspending_waits_the_time_it_was_given() -> None:
    reason = retry_reason("This host sent more control frames than its budget allows.", 60)
    ws = await closed_by_a_server(int(CloseCode.OVER_BUDGET), reason)
    assert asked_to_wait(ws) == 60.0


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4000, "Malformed agent message (x). Reconnect after 60 s."),  # not a budget close
        (int(CloseCode.OVER_BUDGET), "No time given."),
    ],
)
async def test_other_closes_ask_for_no_wait(code: int, reason: str) -> None:
    assert asked_to_wait(await closed_by_a_server(code, reason)) == 0.0
    assert asked_to_wait(None) == 0.0
