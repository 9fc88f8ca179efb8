"""The agent's retry schedule and address rotation (docs/adr/0049), without a network."""

import random
import ssl

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from tether.agent.connection import busy_retry_after
from tether.agent.retry import AddressRotation, Backoff, Ending, RetrySchedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def schedule(clock: Clock, rng: float = 1.0) -> RetrySchedule:
    return RetrySchedule(Backoff(initial=1.0, maximum=60.0), clock=clock, rng=lambda: rng)


def test_going_away_spreads_the_return_over_the_window() -> None:
    rng = random.Random(7)
    retry = RetrySchedule(rng=rng.random)
    delays = [retry.next_delay(Ending.GOING_AWAY) for _ in range(2000)]
    assert 0.0 <= min(delays) < 0.5
    assert 9.5 < max(delays) <= 10.0
    # Spread, not bunched: each second of the window gets about a tenth of the fleet.
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(10)]
    assert all(120 < count < 280 for count in per_second), per_second


def test_refusals_during_a_restart_do_not_grow_the_backoff() -> None:
    clock = Clock()
    retry = schedule(clock)
    retry.next_delay(Ending.GOING_AWAY)
    # The new process is not listening yet: refused again and again, always 1-5 s.
    delays = [retry.next_delay(Ending.FAILED) for _ in range(15)]
    assert all(1.0 <= d <= 5.0 for d in delays)
    assert retry.failures == 0


def test_after_the_restart_grace_real_failures_back_off_exponentially() -> None:
    clock = Clock()
    retry = schedule(clock)
    retry.next_delay(Ending.GOING_AWAY)
    clock.now += 61
    delays = [retry.next_delay(Ending.FAILED) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_failures_without_going_away_back_off_exponentially_with_jitter() -> None:
    retry = schedule(Clock(), rng=0.0)
    assert [retry.next_delay(Ending.FAILED) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_a_busy_platform_is_retried_soon_without_growing_the_backoff() -> None:
    retry = schedule(Clock())
    retry.next_delay(Ending.FAILED)
    retry.next_delay(Ending.FAILED)
    grown = retry.failures
    delays = [retry.next_delay(Ending.BUSY) for _ in range(8)]
    # The window's high end widens by 5 s with each busy answer in a row, up to 30 s.
    assert delays == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0, 30.0]
    assert retry.failures == grown
    low = RetrySchedule(Backoff(), rng=lambda: 0.0)
    assert [low.next_delay(Ending.BUSY) for _ in range(8)] == [1.0] * 8
    # A session resets the window.
    retry.welcomed()
    assert retry.next_delay(Ending.BUSY) == 5.0


def test_endless_busy_answers_count_as_failures_after_a_while() -> None:
    # A load balancer with no live node accepts and closes, just like a shed.
    retry = schedule(Clock())
    for _ in range(20):
        assert retry.next_delay(Ending.BUSY) <= 30.0
    assert [retry.next_delay(Ending.BUSY) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]


def test_a_session_that_reached_welcome_starts_the_backoff_over() -> None:
    retry = schedule(Clock())
    for _ in range(6):
        retry.next_delay(Ending.FAILED)
    retry.welcomed()
    assert retry.next_delay(Ending.LOST) == 1.0
    assert retry.next_delay(Ending.FAILED) == 1.0


def test_moving_to_the_next_address_of_a_round_waits_only_a_jitter() -> None:
    retry = schedule(Clock())
    assert retry.next_delay(Ending.FAILED, round_over=False) == 1.0  # NEXT_ADDRESS_JITTER
    assert retry.failures == 0
    assert retry.next_delay(Ending.FAILED, round_over=True) == 1.0
    assert retry.failures == 1


def test_rotation_tries_every_address_once_per_round_in_its_own_order() -> None:
    addresses = [f"wss://node{i}:8444" for i in range(5)]
    rotation = AddressRotation(addresses, rng=random.Random(3))
    for _ in range(3):
        seen = [rotation.current]
        ends = []
        for _ in range(len(addresses)):
            ends.append(rotation.move_on())
            seen.append(rotation.current)
        assert sorted(seen[:-1]) == sorted(addresses)
        assert ends == [False] * 4 + [True]


def test_agents_do_not_all_start_with_the_same_address() -> None:
    addresses = ["wss://a:8444", "wss://b:8444", "wss://c:8444"]
    firsts = {AddressRotation(addresses, rng=random.Random(seed)).current for seed in range(50)}
    assert firsts == set(addresses)


def test_one_address_ends_a_round_at_every_failure() -> None:
    rotation = AddressRotation(["wss://only:8444"])
    assert rotation.move_on() is True
    assert rotation.current == "wss://only:8444"


def test_a_new_list_is_used_from_the_next_round() -> None:
    rotation = AddressRotation(["wss://a:8444"], rng=random.Random(1))
    assert rotation.replace(["wss://a:8444", "wss://b:8444", "wss://a:8444"]) is True
    assert rotation.replace(["wss://a:8444", "wss://b:8444"]) is False
    assert rotation.current == "wss://a:8444"  # the address in use is kept
    rotation.move_on()
    seen = {rotation.current}
    rotation.move_on()
    seen.add(rotation.current)
    assert seen == {"wss://a:8444", "wss://b:8444"}
    assert rotation.addresses == ("wss://a:8444", "wss://b:8444")


def test_an_empty_list_is_refused_or_ignored() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AddressRotation([])
    rotation = AddressRotation(["wss://a:8444"])
    assert rotation.replace([]) is False
    assert rotation.current == "wss://a:8444"


def _status(code: int, retry_after: str | None = None) -> InvalidStatus:
    headers = Headers({"Retry-After": retry_after} if retry_after else {})
    return InvalidStatus(Response(code, "x", headers))


def test_what_counts_as_busy() -> None:
    assert busy_retry_after(ConnectionResetError(104, "reset")) == 0.0
    assert busy_retry_after(ssl.SSLEOFError()) == 0.0
    assert busy_retry_after(_status(503, "7")) == 7.0
    assert busy_retry_after(_status(503, "999999")) == 300.0
    assert busy_retry_after(_status(503, "soon")) == 0.0
    # A refusal, a timeout, another status or a TLS failure are failures, not a busy platform.
    assert busy_retry_after(ConnectionRefusedError(111, "refused")) is None
    assert busy_retry_after(TimeoutError()) is None
    assert busy_retry_after(_status(500)) is None
    assert busy_retry_after(ssl.SSLError(1, "CERTIFICATE_VERIFY_FAILED")) is None
