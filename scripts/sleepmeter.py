"""A pytest plugin for scripts/compare-test-speed.sh: the seconds each test spends in time.sleep
calls of 1 s or more (waits for a clock, not for a condition), printed after the run."""

import time
from collections.abc import Iterator

import pytest

_real_sleep = time.sleep
_slept = [0.0]
_per_test: dict[str, float] = {}


def _metered(seconds: float) -> None:
    if seconds >= 1:
        _slept[0] += seconds
    _real_sleep(seconds)


time.sleep = _metered


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: object) -> Iterator[None]:
    before = _slept[0]
    yield
    _per_test[item.nodeid] = _slept[0] - before


def pytest_terminal_summary(terminalreporter: object) -> None:
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write(f"SLEEPMETER total {sum(_per_test.values()):.1f} s in sleeps of 1 s or more")
    for nodeid, seconds in sorted(_per_test.items(), key=lambda kv: -kv[1]):
        if seconds:
            write(f"SLEEPMETER {seconds:6.1f} s {nodeid}")
