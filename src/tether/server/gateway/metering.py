"""Charges every frame and byte an agent sends to its connection's budget, from the data path.

The WebSocket library answers pings and drops pongs inside `data_received`, before the handler
runs, so the only place that sees every frame is the connection itself: this mixin charges each
read (its size and the CPU time spent parsing it) and each frame (`process_event` gets control
frames too), and fails the connection the moment a budget runs dry.
"""

import time
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame
from websockets.protocol import State

from tether.protocol import CloseCode, retry_reason
from tether.server.gateway.budget import BudgetLimits, FrameBudget

# Reads are parsed in slices: one read can carry thousands of 6-byte ping frames, and parsing
# them all before the first budget check would hold the event loop for tens of milliseconds.
_SLICE = 16 * 1024


def over_budget_reason(what: str, seconds: int) -> str:
    """The close reason an overspending agent gets (it names when it may come back)."""
    return retry_reason(f"This host sent more {what} than its budget allows.", seconds)


class MeteredConnection(ServerConnection):
    """A server connection that charges its peer for everything it sends."""

    budget_limits: BudgetLimits = BudgetLimits()
    budget: FrameBudget

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = FrameBudget(self.budget_limits)

    def data_received(self, data: bytes) -> None:
        if self.budget.exceeded is not None:
            return  # closing: what else arrives is not read, let alone answered
        for start in range(0, len(data), _SLICE):
            piece = data[start : start + _SLICE] if len(data) > _SLICE else data
            began = time.thread_time()
            super().data_received(piece)
            self.budget.charge_bytes(len(piece), time.thread_time() - began)
            if self.budget.exceeded is not None:
                self._overspent(self.budget.exceeded)
                return

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame):
            self.budget.charge_frame(event)
            if self.budget.exceeded is not None:
                # Frames parsed from the same read after the budget ran out are dropped.
                return
        super().process_event(event)

    def _overspent(self, what: str) -> None:
        """Stop reading, send the close with the retry time, and drop the connection.

        No closing handshake is awaited: the peer has shown it does not play by the rules, and
        waiting would mean reading from it again. The close frame is sent if the peer reads it.
        """
        transport = self.transport
        transport.pause_reading()
        if self.protocol.state is State.OPEN:
            self.protocol.fail(
                int(CloseCode.OVER_BUDGET),
                over_budget_reason(what, self.budget_limits.penalty_seconds),
            )
            self.send_data()
        # A peer that does not read would keep the close frame in our buffer forever.
        self.loop.call_later(self.close_timeout or 2.0, transport.abort)
