"""Throughput of the transfer engines alone: 1 GiB through the agent's and the platform's
engines over an in-memory link, against plain file copy + SHA-256 measured in the same run.

What it measures is the engines' own cost (threads, hashing on both ends, fsync every ack,
framing, flow control), not TLS or the WebSocket library: compare with DESIGN.md section 9
(>= 50% of raw loopback TLS through the platform) once the engines are wired into the sockets.

    .venv/bin/python benchmarks/transfer_engine.py [--size-mib 1024] [--runs 3] [--dir DIR]

Prints one line per measurement and the medians; never part of the test run.
"""

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from tether.agent.transfer import AgentTransfers
from tether.protocol.transfer import (
    DEFAULT_CHUNK_BYTES,
    AnyTransferMessage,
    parse_transfer_message,
    transfer_id_for,
)
from tether.server.services.transfers import HostTransfers
from tether.server.store.blobs import BlobStore

MiB = 1024 * 1024
CHUNK = [DEFAULT_CHUNK_BYTES]  # set from --chunk-kib
# CPU seconds of this process (both engines, all threads) per transfer, in order.
CPU: list[float] = []


class Engine(Protocol):
    async def attach(self, transport: "Pipe") -> None: ...

    def detach(self) -> None: ...

    async def on_message(self, message: AnyTransferMessage) -> None: ...

    async def on_chunk(self, frame: bytes) -> None: ...


class Pipe:
    """One direction of an in-memory connection; frames are handled in order by one task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def send_text(self, text: str) -> None:
        self.queue.put_nowait(text)
        await asyncio.sleep(0)

    async def send_binary(self, frame: bytes | memoryview) -> None:
        # A copy, as a WebSocket frames it: the sender reuses its buffer once this returns.
        self.queue.put_nowait(bytes(frame))
        await asyncio.sleep(0)


async def _deliver(pipe: Pipe, target: Engine) -> None:
    while True:
        frame = await pipe.queue.get()
        if isinstance(frame, bytes):
            await target.on_chunk(frame)
        else:
            await target.on_message(parse_transfer_message(frame))


async def linked(
    agent: AgentTransfers, platform: HostTransfers, work: Callable[[], Awaitable[object]]
) -> float:
    """Seconds `work` takes with the two engines connected."""
    to_agent, to_platform = Pipe(), Pipe()
    await platform.attach(to_agent)
    await agent.attach(to_platform)
    tasks = [
        asyncio.create_task(_deliver(to_platform, platform)),
        asyncio.create_task(_deliver(to_agent, agent)),
    ]
    started = time.perf_counter()
    try:
        await work()
        return time.perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def make_source(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            out.write(block)
            digest.update(block)
    return digest.hexdigest()


def copy_and_hash(source: Path, target: Path) -> float:
    """The baseline: read, hash, write, fsync; what any careful copy costs on this machine."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(MiB):
            digest.update(block)
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    digest.hexdigest()
    return time.perf_counter() - started


async def measure_get(source: Path, store: BlobStore, sha: str, run: int) -> float:
    agent, platform = AgentTransfers(chunk_bytes=CHUNK[0]), HostTransfers(store)
    tid = transfer_id_for(f"bench-get-{run}")

    async def work() -> None:
        blob, _ = await asyncio.gather(
            platform.receive_file(tid, f"bench-get-{run}"),
            agent.send_file(tid, f"bench-get-{run}", source),
        )
        if blob.sha256 != sha:
            raise SystemExit("get: wrong hash")

    cpu = time.process_time()
    seconds = await linked(agent, platform, work)
    CPU.append(time.process_time() - cpu)
    store.path_of(sha).unlink()
    return seconds


async def measure_put(store: BlobStore, sha: str, size: int, target: Path, run: int) -> float:
    agent, platform = AgentTransfers(), HostTransfers(store, chunk_bytes=CHUNK[0])
    tid = transfer_id_for(f"bench-put-{run}")

    async def work() -> None:
        await asyncio.gather(
            platform.send_blob(tid, f"bench-put-{run}", sha),
            agent.receive_file(tid, f"bench-put-{run}", target, size=size, sha256=sha),
        )

    cpu = time.process_time()
    seconds = await linked(agent, platform, work)
    CPU.append(time.process_time() - cpu)
    target.unlink()
    return seconds


def rate(size: int, seconds: float) -> float:
    return size / seconds / 1e6


async def main_async(args: argparse.Namespace, directory: Path) -> None:
    size = args.size_mib * MiB
    source = directory / "source.bin"
    print(f"writing {args.size_mib} MiB of random bytes to {source} ...", flush=True)
    sha = make_source(source, size)
    store = BlobStore(directory / "blobs", max_bytes=max(size, 4 * 1024**3))
    target = directory / "copy.bin"

    baseline, gets, puts = [], [], []
    for run in range(args.runs):
        seconds = await asyncio.to_thread(copy_and_hash, source, target)
        target.unlink()
        baseline.append(rate(size, seconds))
        print(f"run {run + 1}: copy+sha256 {baseline[-1]:.0f} MB/s", flush=True)
        gets.append(rate(size, await measure_get(source, store, sha, run)))
        print(
            f"run {run + 1}: files.get engine {gets[-1]:.0f} MB/s, CPU both ends "
            f"{CPU[-1] / size * 1e9:.2f} s per GB; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    # The library blob for the put direction.
    partial = await store.open_partial(transfer_id_for("bench-library"))
    with source.open("rb") as src:
        while block := src.read(MiB):
            await partial.write(partial.size, block)
    await partial.commit(sha, size)
    for run in range(args.runs):
        puts.append(rate(size, await measure_put(store, sha, size, target, run)))
        print(
            f"run {run + 1}: files.put engine {puts[-1]:.0f} MB/s, CPU both ends "
            f"{CPU[-1] / size * 1e9:.2f} s per GB; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    base = statistics.median(baseline)
    get = statistics.median(gets)
    put = statistics.median(puts)
    print()
    print(
        f"size {args.size_mib} MiB, chunks of {args.chunk_kib} KiB, median of {args.runs}, "
        f"event loop {args.loop}"
    )
    print(f"copy + sha256 baseline : {base:7.0f} MB/s")
    print(f"files.get (agent->blob): {get:7.0f} MB/s  ({get / base:.2f}x baseline)")
    print(f"files.put (blob->agent): {put:7.0f} MB/s  ({put / base:.2f}x baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a disk)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_BYTES // 1024)
    args = parser.parse_args()
    CHUNK[0] = args.chunk_kib * 1024
    directory = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=args.dir))
    try:
        if args.loop == "uvloop" and sys.platform != "win32":
            import uvloop

            uvloop.run(main_async(args, directory))
        else:
            asyncio.run(main_async(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
