"""A backend that records what the Isolator asks, and a probe the test sets up or down.

For the Isolator's decisions only: what rules do to packets is tested with the real firewall
(test_packets.py).
"""

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tether.agent.errors import IsolationFailed
from tether.agent.isolation import IsolationPolicy, Isolator
from tether.agent.isolation.policy import IPAddress
from tether.agent.state import StateDir
from tether.protocol.isolation import Backend

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
V4 = ipaddress.IPv4Address("127.0.0.1")


class Recorder:
    """A backend that records what it was asked and holds "rules" as the last policy applied."""

    name: Backend = "nftables"

    def __init__(self) -> None:
        self.rules: IsolationPolicy | None = None
        self.calls: list[str] = []
        self.fail_apply = False

    async def apply(self, policy: IsolationPolicy) -> None:
        self.calls.append(f"apply {policy.mode.value} {','.join(map(str, policy.platform))}")
        if self.fail_apply:
            raise IsolationFailed("nft refused to apply the isolation rules: boom.")
        self.rules = policy

    async def remove(self) -> None:
        self.calls.append("remove")
        self.rules = None

    async def installed(self) -> bool:
        return self.rules is not None

    async def listing(self) -> str | None:
        return None if self.rules is None else repr(self.rules)


class Reachability:
    def __init__(self) -> None:
        self.up = True
        self.asked: list[tuple[tuple[IPAddress, ...], int]] = []

    async def __call__(self, addresses: Sequence[IPAddress], port: int, timeout: float) -> bool:
        self.asked.append((tuple(addresses), port))
        return self.up


def make(
    tmp_path: Path, backend: Recorder, probe: Reachability, url: str = "wss://127.0.0.1:8444/agent"
) -> Isolator:
    return Isolator(
        StateDir(tmp_path),
        url,
        backend=backend,
        probe=probe,
        require_privileges=False,
        clock=lambda: NOW,
    )
