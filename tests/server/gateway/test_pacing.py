"""The per-connection message budget: bursts pass, a flood is slowed to the rate."""

from tether.server.gateway.pacing import Pacing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_within_the_budget_is_not_delayed() -> None:
    clock = Clock()
    pacing = Pacing(rate=10, burst=50, clock=clock)
    assert [pacing.delay() for _ in range(50)] == [0.0] * 50


def test_a_flood_waits_for_the_rate_and_the_budget_refills() -> None:
    clock = Clock()
    pacing = Pacing(rate=10, burst=50, clock=clock)
    for _ in range(50):
        pacing.delay()
    # Past the burst each message waits its share: 1/rate more for every one over budget.
    assert pacing.delay() == 0.1
    assert round(pacing.delay(), 6) == 0.2
    clock.now += 0.2  # the gateway slept that long: the debt is paid
    assert round(pacing.delay(), 6) == 0.1
    clock.now += 60  # a quiet minute refills the bucket, never past the burst
    assert [pacing.delay() for _ in range(50)] == [0.0] * 50
    assert pacing.delay() > 0
