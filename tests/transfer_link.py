"""An in-memory link between an agent's and the platform's transfer engines, for unit tests.

Frames travel through two queues and are delivered in order, one at a time, to the other side's
`on_message` / `on_chunk`, as the real connections do. The link measures what flow control
promises (bytes sent beyond the last acknowledgement the sender has received) and can be cut
after a number of chunk bytes, like a connection dying mid-transfer.
"""

import asyncio
import contextlib
import hashlib
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from uuid import UUID

import pytest

from tether.protocol.transfer import (
    AnyTransferMessage,
    TransferAccept,
    TransferAck,
    decode_chunk,
    parse_transfer_message,
)


class Engine(Protocol):
    async def attach(self, transport: "Pipe") -> None: ...

    def detach(self) -> None: ...

    async def on_message(self, message: AnyTransferMessage) -> None: ...

    async def on_chunk(self, frame: bytes) -> None: ...


@dataclass
class FlowStats:
    """Per transfer: the highest chunk end sent and the credit the sender has seen."""

    sent_end: int = 0
    acked: int = 0
    max_in_flight: int = 0
    chunks: int = 0


class Pipe:
    """One direction of the link: the `Transport` one engine sends with."""

    def __init__(self, link: "Link") -> None:
        self._link = link
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def send_text(self, text: str) -> None:
        self._link.check_open()
        self.queue.put_nowait(text)
        await asyncio.sleep(0)

    async def send_binary(self, frame: bytes | memoryview) -> None:
        self._link.check_open()
        # A copy: the sender reuses its buffer once this returns, as a real connection allows.
        frame = bytes(frame)
        self._link.count_chunk(frame)
        self.queue.put_nowait(frame)
        await asyncio.sleep(0)


@dataclass
class Link:
    agent: Engine
    platform: Engine
    cut_after: int | None = None
    stats: dict[UUID, FlowStats] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    chunk_bytes: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.to_platform = Pipe(self)
        self.to_agent = Pipe(self)
        self.cut_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> "Link":
        # Both ends are attached before any frame is read, as the connections do after welcome.
        await self.platform.attach(self.to_agent)
        await self.agent.attach(self.to_platform)
        self._tasks = [
            asyncio.create_task(self._deliver(self.to_platform, self.platform)),
            asyncio.create_task(self._deliver(self.to_agent, self.agent)),
        ]
        return self

    def check_open(self) -> None:
        if self.closed:
            raise ConnectionResetError("The in-memory link is cut.")

    def count_chunk(self, frame: bytes) -> None:
        header, payload = decode_chunk(frame)
        stats = self.stats.setdefault(header.transfer_id, FlowStats())
        stats.sent_end = header.offset + len(payload)
        stats.chunks += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.sent_end - stats.acked)
        self.chunk_bytes += len(payload)
        if self.cut_after is not None and self.chunk_bytes >= self.cut_after:
            self.cut()
            raise ConnectionResetError("The in-memory link was cut mid-transfer.")

    async def _deliver(self, pipe: Pipe, target: Engine) -> None:
        while True:
            frame = await pipe.queue.get()
            try:
                if isinstance(frame, bytes):
                    await target.on_chunk(frame)
                else:
                    message = parse_transfer_message(frame)
                    if isinstance(message, TransferAccept | TransferAck):
                        # Credit counts once the sender has it, which is what it enforces.
                        stats = self.stats.setdefault(message.transfer_id, FlowStats())
                        stats.acked = message.offset
                    await target.on_message(message)
            except Exception as exc:  # a protocol violation ends the link, as in the gateway
                self.errors.append(exc)
                self.cut()
                return

    def cut(self) -> None:
        """The connection dies: nothing more goes through, queued frames are lost."""
        self.closed = True
        self.cut_event.set()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def close(self) -> None:
        self.cut()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.agent.detach()
        self.platform.detach()


def write_random_file(path: Path, size: int, *, seed: int = 1) -> str:
    """A file of `size` pseudo-random bytes (written 1 MiB at a time); its SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, 1024 * 1024))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "1m") -> Iterator[Path]:
    """A tiny tmpfs at `directory`, to run out of disk on purpose; skips unless root."""
    if os.geteuid() != 0:
        reason = "mounting a 1 MiB tmpfs to fill the disk needs root"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
