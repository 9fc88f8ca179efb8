"""Ports for the platforms, agents and listeners the tests start.

`bind(("127.0.0.1", 0))` then close hands out a port from the kernel's ephemeral range, and the
kernel hands the same port to the next `bind(0)` or outgoing connection, in this process or
another, before the platform that was meant to take it has bound it. With two test workers that
happened: a worker's session platform died with "address already in use" and every test on that
worker failed with it. So each worker draws from a range of its own, below the ephemeral range
(which the kernel never hands out by itself), and never hands out a port twice.
"""

import os
import random
import socket

# Linux's ephemeral range starts at 32768; these stay below it.
_BASE = 12_000
_SPAN = 4_000
_handed_out: set[int] = set()


def _worker_index() -> int:
    """0 without pytest-xdist; 1, 2, ... for its workers gw0, gw1, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) + 1 if name.startswith("gw") and name[2:].isdigit() else 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now, from this worker's own range."""
    low = _BASE + (_worker_index() % 5) * _SPAN
    candidates = list(range(low, low + _SPAN))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {low}-{low + _SPAN - 1}")
