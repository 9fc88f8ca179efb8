"""Admission control's bookkeeping (docs/adr/0049); real connections in tests/e2e/test_storm.py."""

from tether.server.services.admission import Admission


class Held:
    def __init__(self) -> None:
        self.aborted = False

    def abort_handshake(self) -> None:
        self.aborted = True


def test_connections_beyond_the_limit_are_shed_and_counted() -> None:
    admission = Admission(limit=2)
    first, second, third = Held(), Held(), Held()
    assert admission.admit(first)
    assert admission.admit(second)
    assert not admission.admit(third)
    assert (admission.in_flight, admission.shed, admission.admitted) == (2, 1, 2)
    # A handshake that ends (either way) frees its place, once.
    admission.release(first)
    admission.release(first)
    assert admission.in_flight == 1
    assert admission.admit(third)


def test_no_limit_admits_everything() -> None:
    admission = Admission(limit=0)
    assert all(admission.admit(Held()) for _ in range(1000))
    assert admission.shed == 0


def test_stopping_drops_every_connection_still_in_its_handshake() -> None:
    admission = Admission(limit=10)
    held = [Held() for _ in range(3)]
    for connection in held:
        admission.admit(connection)
    admission.release(held[0])
    assert admission.abort_all() == 2
    assert [c.aborted for c in held] == [False, True, True]
    assert admission.in_flight == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_follows_the_rate_handshakes_complete_at() -> None:
    clock = Clock()
    admission = Admission(limit=500, clock=clock)
    # Nothing measured yet: a burst of MIN_LIMIT is let in.
    assert admission.current_limit() == 32
    # 100 handshakes completing a second: two seconds' worth, 200, may be in flight.
    for _ in range(200):
        held = Held()
        admission.admit(held)
        admission.release(held, completed=True)
        clock.now += 0.01
    assert 195 <= admission.current_limit() <= 200
    # Failed handshakes do not count: a process that completes none is held to the minimum,
    # so the few it lets in finish before their agents' open timeout.
    clock.now += 3
    for _ in range(50):
        held = Held()
        admission.admit(held)
        admission.release(held)
    assert admission.current_limit() == 32
    # And never above the configured ceiling.
    fast = Admission(limit=100, clock=clock)
    for _ in range(1000):
        held = Held()
        fast.admit(held)
        fast.release(held, completed=True)
    assert fast.current_limit() == 100
