"""Sending each signed audit checkpoint off the host as it is made (docs/adr/0032-audit-witnesses.md).

A sink is a place a SIEM reads: syslog over TCP or TLS (`checkpoint_sinks/syslog.py`) or a JSON
line appended to a file (`checkpoint_sinks/json_file.py`). Signing an audit record must never wait
on one, so each sink has a `CheckpointForwarder`: a bounded queue the signer's listener fills and
a background task drains, with a timeout on every send and growing pauses between attempts while
the sink is down. A newer checkpoint covers everything an older one does, so when the queue is
full the oldest is dropped; drops and failed sends are logged and counted in /metrics.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tether.server.config import Settings
from tether.server.services.checkpoint_sinks.json_file import JsonFileSink
from tether.server.services.checkpoint_sinks.syslog import SyslogSink, parse_syslog_target
from tether.server.services.checkpoints import Checkpoint, CheckpointSigner

log = logging.getLogger(__name__)

QUEUE_CAPACITY = 32
SEND_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 1.0
LAST_RETRY_SECONDS = 30.0
# How long a stopping platform waits for its last checkpoints to leave.
CLOSE_GRACE_SECONDS = 3.0
DROP_LOG_SECONDS = 60.0
# How often the newest checkpoint is sent again when nothing new was signed.
RESEND_SECONDS = 3600.0


class CheckpointSink(Protocol):
    """One external place that keeps checkpoints."""

    name: str

    async def send(self, checkpoint: Checkpoint) -> None:
        """Deliver one checkpoint; raises OSError (or TimeoutError) when it could not."""

    async def reset(self) -> None:
        """Forget any connection after a failure, so the next send starts afresh."""


class CheckpointForwarder:
    """A bounded queue of checkpoints for one sink and the task that drains it."""

    def __init__(
        self,
        sink: CheckpointSink,
        *,
        capacity: int = QUEUE_CAPACITY,
        timeout: float = SEND_TIMEOUT_SECONDS,
        first_retry: float = FIRST_RETRY_SECONDS,
        last_retry: float = LAST_RETRY_SECONDS,
    ) -> None:
        self.sink = sink
        self._pending: deque[Checkpoint] = deque()
        self._capacity = capacity
        self._timeout = timeout
        self._first_retry = first_retry
        self._last_retry = last_retry
        self._wake = asyncio.Event()
        # Set whenever nothing waits to be sent.
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_logged = -DROP_LOG_SECONDS
        self.sent = 0
        self.dropped = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, checkpoint: Checkpoint) -> None:
        """Queue `checkpoint` without waiting (the signer's listener); the oldest makes room."""
        if len(self._pending) >= self._capacity:
            dropped = self._pending.popleft()
            self.dropped += 1
            # One line per minute at most: a sink that is down for an hour must not flood the log.
            now = time.monotonic()
            if now - self._last_drop_logged >= DROP_LOG_SECONDS:
                self._last_drop_logged = now
                log.warning(
                    "Checkpoint sink %s is behind: dropped the checkpoint at record %d for a "
                    "newer one (%d dropped so far)",
                    self.sink.name,
                    dropped.seq,
                    self.dropped,
                )
        self._pending.append(checkpoint)
        self._drained.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._drain(), name=f"checkpoint-sink {self.sink.name}"
            )

    async def _drain(self) -> None:
        retry = self._first_retry
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                checkpoint = self._pending[0]
                try:
                    async with asyncio.timeout(self._timeout):
                        await self.sink.send(checkpoint)
                except Exception as exc:  # any failure of a sink must leave the platform running
                    self.failures += 1
                    log.warning(
                        "Cannot send the checkpoint at record %d to %s (%s); retrying in %.0f s",
                        checkpoint.seq,
                        self.sink.name,
                        str(exc) or type(exc).__name__,
                        retry,
                    )
                    with contextlib.suppress(Exception):
                        await self.sink.reset()
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, self._last_retry)
                    continue
                retry = self._first_retry
                self.sent += 1
                # While it was being sent it may have been dropped to make room.
                if self._pending and self._pending[0] is checkpoint:
                    self._pending.popleft()
            self._drained.set()

    async def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Give queued checkpoints `grace` seconds to leave, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._drained.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self.sink.reset()
        self._task = None


class CheckpointWitnesses:
    """Every configured sink; `offer` is the listener the checkpoint signer calls.

    The newest checkpoint is also sent at start and every `resend_seconds` after: a SIEM then
    sees where the chain stands after a restart (a rollback made while the platform was down
    shows as a lower record number), and can alert when a platform falls silent."""

    def __init__(
        self,
        sinks: list[CheckpointSink],
        signer: CheckpointSigner | None = None,
        resend_seconds: float = RESEND_SECONDS,
    ) -> None:
        self.forwarders = [CheckpointForwarder(sink) for sink in sinks]
        self._signer = signer
        self._resend_seconds = resend_seconds
        self._resender: asyncio.Task[None] | None = None

    def offer(self, checkpoint: Checkpoint) -> None:
        for forwarder in self.forwarders:
            forwarder.offer(checkpoint)

    def start(self) -> None:
        for forwarder in self.forwarders:
            forwarder.start()
            log.info("Signed audit checkpoints go to %s", forwarder.sink.name)
        if self.forwarders and self._signer is not None and self._resender is None:
            self._offer_latest(self._signer)
            self._resender = asyncio.create_task(self._resend(self._signer))

    def _offer_latest(self, signer: CheckpointSigner) -> None:
        latest = signer.latest()
        if latest is not None and latest.seq >= 0:
            self.offer(latest)

    async def _resend(self, signer: CheckpointSigner) -> None:
        while True:
            await asyncio.sleep(self._resend_seconds)
            self._offer_latest(signer)

    async def close(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resender
            self._resender = None
        await asyncio.gather(*(f.close() for f in self.forwarders))

    def collector(self) -> Collector:
        """The sinks' counters for /metrics."""
        return _SinkMetrics(self)


class _SinkMetrics(Collector):
    def __init__(self, witnesses: CheckpointWitnesses) -> None:
        self._witnesses = witnesses

    def collect(self) -> Iterator[CounterMetricFamily]:
        families = {
            "sent": "Checkpoints delivered to the sink",
            "dropped": "Checkpoints dropped unsent because newer ones filled the queue",
            "failures": "Attempts to send a checkpoint that failed",
        }
        for field, help_text in families.items():
            family = CounterMetricFamily(
                f"tether_checkpoint_sink_{field}", help_text, labels=["sink"]
            )
            for forwarder in self._witnesses.forwarders:
                family.add_metric([forwarder.sink.name], getattr(forwarder, field))
            yield family


def build_witnesses(settings: Settings, signer: CheckpointSigner) -> CheckpointWitnesses:
    """The sinks the settings name, listening to `signer`; ConfigurationError (one sentence)
    when an address is not one."""
    key = signer.public_key_pem()
    sinks: list[CheckpointSink] = []
    if settings.checkpoint_syslog:
        ca_file = Path(settings.checkpoint_syslog_ca) if settings.checkpoint_syslog_ca else None
        target = parse_syslog_target(settings.checkpoint_syslog)
        sinks.append(
            SyslogSink(target, hostname=settings.hostname, public_key_pem=key, ca_file=ca_file)
        )
    if settings.checkpoint_file:
        path = Path(settings.checkpoint_file)
        sinks.append(JsonFileSink(path, hostname=settings.hostname, public_key_pem=key))
    witnesses = CheckpointWitnesses(sinks, signer)
    signer.add_listener(witnesses.offer)
    return witnesses
