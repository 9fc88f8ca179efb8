"""What one agent connection may cost the platform: frames, bytes and CPU time.

Everything an agent sends costs the platform something before any handler sees it: the WebSocket
library parses every frame and answers every ping itself, so a flood of pings or pongs never
reaches the read loop (issue 21: one endpoint froze the analyst API that way). Each connection
therefore carries token buckets, charged from the connection's own data path for every frame,
control frames included; when one runs dry the connection is closed (`CloseCode.OVER_BUDGET`)
and the host is told when it may come back.

The rates are far above the busiest honest agent and far below what hurts the platform:
- frames: a files.get at full speed sends about 1,000 chunk frames a second, and text messages
  are paced to 500 a second by `Pacing` (back-pressure, no close);
- control frames: an honest agent pings once every 120 s and never sends an unsolicited pong;
- bytes: a transfer at loopback speed (docs/performance.md) stays well inside;
- CPU: parsing and unmasking what one connection sends, measured per read, in seconds of CPU
  per second.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from websockets.frames import Frame, Opcode


@dataclass(frozen=True)
class BudgetLimits:
    """Sustained rates and bursts for one connection."""

    frames_per_second: float = 3000.0
    frame_burst: float = 30_000.0
    control_frames_per_second: float = 2.0
    control_frame_burst: float = 60.0
    bytes_per_second: float = 512 * 1024 * 1024
    byte_burst: float = 1024 * 1024 * 1024
    cpu_per_second: float = 0.25
    cpu_burst: float = 3.0
    # How long a host that overspent is refused before it may connect again.
    penalty_seconds: int = 60


class _Bucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    def spend(self, amount: float, now: float) -> bool:
        """Take `amount`; False once the bucket is in debt."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= amount
        return self._tokens >= 0


_CONTROL = frozenset({Opcode.PING, Opcode.PONG})


class FrameBudget:
    """The buckets of one connection, and what it spent (for the record)."""

    def __init__(
        self, limits: BudgetLimits, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._clock = clock
        now = clock()
        self._frames = _Bucket(limits.frames_per_second, limits.frame_burst, now)
        self._control = _Bucket(limits.control_frames_per_second, limits.control_frame_burst, now)
        self._bytes = _Bucket(limits.bytes_per_second, limits.byte_burst, now)
        self._cpu = _Bucket(limits.cpu_per_second, limits.cpu_burst, now)
        self.frames = 0
        self.control_frames = 0
        self.bytes = 0
        self.cpu_seconds = 0.0
        # Which budget ran out first; None while within all of them.
        self.exceeded: str | None = None

    def charge_bytes(self, size: int, cpu_seconds: float) -> None:
        """What one read from the network cost: its size and the CPU spent parsing it."""
        now = self._clock()
        self.bytes += size
        self.cpu_seconds += cpu_seconds
        if not self._bytes.spend(size, now):
            self._exceed("bytes")
        if not self._cpu.spend(cpu_seconds, now):
            self._exceed("CPU time")

    def charge_frame(self, frame: Frame) -> None:
        now = self._clock()
        self.frames += 1
        if frame.opcode in _CONTROL:
            self.control_frames += 1
            if not self._control.spend(1, now):
                self._exceed("control frames")
        if not self._frames.spend(1, now):
            self._exceed("frames")

    def _exceed(self, what: str) -> None:
        if self.exceeded is None:
            self.exceeded = what

    def spent(self) -> dict[str, int | float]:
        """What the connection cost so far, for the record."""
        return {
            "frames": self.frames,
            "control_frames": self.control_frames,
            "bytes": self.bytes,
            "cpu_ms": round(self.cpu_seconds * 1000, 1),
        }
