"""File retrieval end to end: `files.get` of a large file through a real agent and platform,
against raw loopback TLS measured in the same run.

    .venv/bin/python benchmarks/transfer.py [--size-gib 3] [--runs 3] [--dir DIR]

Steps (all on 127.0.0.1; every process started here is stopped here, every file removed):
  1. A random file of --size-gib in a temporary directory; `tether server init` and
     `tether server run` (SQLite) with their data in the same directory, so the same disk.
  2. Segment "bench" with Active Response on, a one-use enrollment token, `tether agent enroll`
     and `tether agent run`; the admin logs in with its TOTP second factor.
  3. Each run, in this order, each in its own processes:
     (a) raw TLS: a sender streams the size from memory in 1 MiB writes, a receiver discards;
     (b) a plain copy over TLS: the sender reads the file from disk, the receiver hashes it
         (SHA-256), writes it to disk and fsyncs at the end;
     (c) `files.get` of the file: from submitting the job to the job `succeeded`, with the RSS
         of the platform and the agent sampled every 0.5 s; the stored blob's hash is checked.
     Both baselines use the platform's TLS settings and certificates: the agent port's server
     context (`agent_ssl_context`) and the real agent's client context and identity.
  4. One more retrieval of a small file (--small-mib) to show the memory does not grow with
     the size; medians, ratios and verdicts printed and written to the "transfer" section of
     docs/performance.md (sections.py).

Never part of the test run.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import load
import sections
from tether.protocol import FINAL_AGENT_STATES

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1024 * 1024
BLOCK = MiB  # the baselines' read and write size
# Every state after which a job never changes again (as the dispatcher's FINAL_STATES).
TERMINAL = FINAL_AGENT_STATES | {"expired"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- The baselines: one process each side, blocking sockets, the platform's TLS. -------------


def serve_once(args: argparse.Namespace) -> None:
    """Receiver: accept one TLS connection, read --size bytes, print the timing as JSON."""
    from tether.server.gateway.server import agent_ssl_context

    context = agent_ssl_context(args.ca, args.cert, args.key)
    with socket.create_server(("127.0.0.1", args.port)) as listener:
        print("ready", flush=True)
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as conn:
            started = time.perf_counter()
            buffer = bytearray(BLOCK)
            view = memoryview(buffer)
            received = 0
            digest = hashlib.sha256()
            out = open(args.out, "wb") if args.mode == "disk" else None  # noqa: SIM115
            try:
                while received < args.size:
                    n = conn.recv_into(buffer, BLOCK)
                    if n == 0:
                        break
                    received += n
                    if out is not None:
                        digest.update(view[:n])
                        out.write(view[:n])
                if out is not None:
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                if out is not None:
                    out.close()
            seconds = time.perf_counter() - started
            result = {
                "seconds": seconds,
                "bytes": received,
                "tls": conn.version(),
                "cipher": (conn.cipher() or ("?",))[0],
                "sha256": digest.hexdigest() if args.mode == "disk" else None,
            }
            conn.sendall(b"k")  # tell the sender we have it all
    print(json.dumps(result), flush=True)


def send_once(args: argparse.Namespace) -> None:
    """Sender: connect as the agent would, send --size bytes from memory or from --file."""
    from tether.agent.connection import client_ssl_context
    from tether.agent.state import StateDir

    context = client_ssl_context(StateDir(Path(args.state_dir)))
    with (
        socket.create_connection(("127.0.0.1", args.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        if args.file:
            with open(args.file, "rb", buffering=0) as source:
                buffer = bytearray(BLOCK)
                view = memoryview(buffer)
                while n := source.readinto(buffer):
                    conn.sendall(view[:n])
        else:
            block = os.urandom(BLOCK)
            left = args.size
            while left > 0:
                conn.sendall(block[: min(BLOCK, left)])
                left -= BLOCK
        conn.recv(1)


# --- The transport alone: the real engines over the real WebSocket and TLS, no disk. ----------


class _Link:
    """A websockets connection as the transfer engine sends on it."""

    def __init__(self, websocket: Any) -> None:
        self._ws = websocket

    async def send_text(self, text: str) -> None:
        await self._ws.send(text)

    async def send_binary(self, frame: bytes | memoryview) -> None:
        await self._ws.send(frame)


class _DiscardSink:
    """Hashes what arrives (in a worker thread, as the file store does) and keeps nothing."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.written = 0

    async def open(self, size: int) -> int:
        return 0

    async def write(self, offset: int, data: memoryview) -> None:
        await asyncio.to_thread(self.hasher.update, data)
        self.written = offset + len(data)

    async def sync(self) -> int:
        return self.written

    async def commit(self, size: int, sha256: str) -> tuple[str, None]:
        return self.hasher.hexdigest(), None

    async def discard(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def _serve_engine(args: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.server import serve

    from tether.protocol.transfer import ReceiverFlow, parse_transfer_message, transfer_id_for
    from tether.protocol.transfer_engine import Receiver, TransferBook, Wording
    from tether.protocol.version import MAX_FRAME_BYTES
    from tether.server.gateway.server import agent_ssl_context

    wording = Wording("{}", "{}", "unknown {}", "never opened {}")
    finished: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handler(websocket: Any) -> None:
        book = TransferBook(wording)
        await book.attach(_Link(websocket))
        flow = ReceiverFlow(transfer_id_for("bench"), "bench", "get", max_size=args.size)
        sink = _DiscardSink()
        receiving = asyncio.create_task(book.run_receiver(Receiver(flow, sink, wording)))
        started = 0.0
        async for frame in websocket:
            if isinstance(frame, bytes):
                await book.on_chunk(frame)
            else:
                if not started:
                    started = time.perf_counter()
                await book.on_message(parse_transfer_message(frame))
            if receiving.done():
                break
        await receiving
        finished.set_result(
            {
                "seconds": time.perf_counter() - started,
                "bytes": sink.written,
                "sha256": sink.hasher.hexdigest(),
            }
        )
        await websocket.wait_closed()

    context = agent_ssl_context(args.ca, args.cert, args.key)
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        ssl=context,
        compression=None,
        max_size=MAX_FRAME_BYTES,
        max_queue=16,
    ):
        print("ready", flush=True)
        return await finished


async def _send_engine(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    from tether.agent.connection import client_ssl_context
    from tether.agent.state import StateDir
    from tether.agent.transfer import AgentTransfers
    from tether.protocol.transfer import parse_transfer_message, transfer_id_for
    from tether.protocol.version import MAX_FRAME_BYTES

    context = client_ssl_context(StateDir(Path(args.state_dir)))
    async with connect(
        f"wss://127.0.0.1:{args.port}",
        ssl=context,
        server_hostname="127.0.0.1",
        compression=None,
        max_size=MAX_FRAME_BYTES,
    ) as websocket:
        transfers = AgentTransfers()
        await transfers.attach(_Link(websocket))

        async def read() -> None:
            async for frame in websocket:
                if isinstance(frame, bytes):
                    await transfers.on_chunk(frame)
                else:
                    await transfers.on_message(parse_transfer_message(frame))

        reader = asyncio.create_task(read())
        await transfers.send_file(transfer_id_for("bench"), "bench", Path(args.file))
        reader.cancel()


def engine_once(args: argparse.Namespace) -> None:
    """The transport alone, one side per process, on uvloop as the platform and the agent run."""
    import uvloop

    if args.role == "receive":
        print(json.dumps(uvloop.run(_serve_engine(args))), flush=True)
    else:
        uvloop.run(_send_engine(args))


async def baseline(
    mode: str, *, size: int, source: Path, sink: Path, bench: "Bench"
) -> dict[str, Any]:
    """One baseline transfer in two fresh processes; the receiver's figures."""
    data, state_dir, logs = bench.data, bench.state_dir, bench.logs
    port = free_port()
    me = [load.PYTHON, str(Path(__file__).resolve())]
    receiver = await load.spawn(
        f"recv-{mode}",
        [
            *me,
            "--role",
            "receive",
            "--mode",
            mode,
            "--port",
            str(port),
            "--size",
            str(size),
            "--out",
            str(sink),
            "--ca",
            str(data / "ca.pem"),
            "--cert",
            str(data / "server.pem"),
            "--key",
            str(data / "server.key"),
        ],
        logs / "baseline.log",
        stdout=asyncio.subprocess.PIPE,
    )
    assert receiver.proc.stdout is not None
    async with asyncio.timeout(30):
        await receiver.proc.stdout.readline()
    sender = await load.spawn(
        f"send-{mode}",
        [
            *me,
            "--role",
            "send",
            "--port",
            str(port),
            "--size",
            str(size),
            "--state-dir",
            str(state_dir),
            "--mode",
            mode,
            *(["--file", str(source)] if mode in ("disk", "engine") else []),
        ],
        logs / "baseline.log",
    )
    try:
        async with asyncio.timeout(600):
            line = await receiver.proc.stdout.readline()
            await sender.proc.wait()
            await receiver.proc.wait()
    finally:
        await sender.stop(5)
        await receiver.stop(5)
    sink.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(line)
    if result["bytes"] != size:
        raise RuntimeError(f"baseline {mode}: {result['bytes']} of {size} bytes arrived")
    return result


# --- The platform and the agent. --------------------------------------------------------------


def tree_rss(process: psutil.Process) -> int:
    """RSS of a process and its descendants (the agent may run helpers)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def tree_cpu(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


@dataclasses.dataclass
class Retrieval:
    size: int
    seconds: float
    platform_rss: list[int]
    agent_rss: list[int]
    platform_cpu_s: float
    agent_cpu_s: float
    job_id: str = ""

    @property
    def rate(self) -> float:
        return self.size / self.seconds


class Bench:
    """A platform, one agent in a segment with Active Response on, an admin with TOTP."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ports = load.Ports(free_port(), free_port(), 0)
        self.data = load.init_platform(work, self.ports)
        self.platform = load.Platform(self.data, self.ports, self.logs / "platform.log")
        self.state_dir = work / "agent"
        self.agent: load.Child | None = None
        self.host_id = ""

    async def start(self) -> None:
        await self.platform.start()
        await self.platform.login()
        http = self.platform.http
        (await http.post("/api/v1/segments", json={"name": "bench"})).raise_for_status()
        (
            await http.patch("/api/v1/segments/bench", json={"active_response": True})
        ).raise_for_status()
        response = await http.post(
            "/api/v1/enrollment-tokens",
            json={"segment": "bench", "uses": 1, "expires_in_seconds": 600},
        )
        response.raise_for_status()
        token = str(response.json()["token"])
        subprocess.run(
            [load.TETHER, "agent", "enroll", "--token", token, "--state-dir", str(self.state_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.host_id = json.loads((self.state_dir / "identity.json").read_text())["host_id"]
        self.agent = await load.spawn(
            "agent",
            [load.TETHER, "agent", "run", "--state-dir", str(self.state_dir)],
            self.logs / "agent.log",
        )

        async def online() -> bool:
            answer = await http.get(f"/api/v1/hosts/{self.host_id}")
            return answer.status_code == 200 and bool(answer.json()["online"])

        if await load.wait_for(online, 60, 0.1) is None:
            raise RuntimeError(f"The agent did not come online; see {self.logs}")

    async def retrieve(
        self, path: Path, size: int, expected: str, *, profile: Path | None = None
    ) -> Retrieval:
        """files.get of `path`: timed from submission to `succeeded`, memory sampled; with
        `profile`, py-spy samples the platform and the agent meanwhile (collapsed stacks)."""
        assert self.agent is not None
        spies = []
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            for name, pid in (("platform", self.platform.proc.pid), ("agent", self.agent.pid)):
                spies.append(
                    subprocess.Popen(
                        [
                            str(Path(load.PYTHON).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(pid),
                            "--rate",
                            "250",
                            "--threads",
                            "--native",
                            "--format",
                            "raw",
                            "--output",
                            str(profile / f"{name}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            await asyncio.sleep(1.0)  # py-spy attached before the clock starts
        http = self.platform.http
        plat_ps, agent_ps = self.platform.proc.ps, self.agent.ps
        platform_rss = [tree_rss(plat_ps)]
        agent_rss = [tree_rss(agent_ps)]
        cpu0 = (tree_cpu(plat_ps), tree_cpu(agent_ps))

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.5)
                platform_rss.append(tree_rss(plat_ps))
                agent_rss.append(tree_rss(agent_ps))

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        try:
            response = await http.post(
                "/api/v1/jobs",
                json={
                    "action": "files.get",
                    "args": {"path": str(path), "max_bytes": size},
                    "hosts": [self.host_id],
                },
            )
            response.raise_for_status()
            batch = response.json()
            if batch["refused"] or not batch["jobs"]:
                raise RuntimeError(f"The job was refused: {batch['refused']}")
            job_id = batch["jobs"][0]["id"]
            job = await self.wait_for_end(job_id)
            seconds = time.perf_counter() - started
        finally:
            sampler.cancel()
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
            for spy in spies:
                await asyncio.to_thread(spy.wait, 30)
        cpu1 = (tree_cpu(plat_ps), tree_cpu(agent_ps))
        platform_rss.append(tree_rss(plat_ps))
        agent_rss.append(tree_rss(agent_ps))
        if job["state"] != "succeeded":
            raise RuntimeError(f"files.get ended {job['state']}: {job}")
        if job["result"]["sha256"] != expected:
            raise RuntimeError(f"The agent reported {job['result']['sha256']}, not {expected}")
        # Off the clock: the stored blob holds exactly the file's bytes.
        stored = self.stored(expected)
        if await asyncio.to_thread(sha256_of, stored) != expected:
            raise RuntimeError(f"The stored blob {stored} does not hash to {expected}")
        return Retrieval(
            size, seconds, platform_rss, agent_rss, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], job_id
        )

    async def wait_for_end(self, job_id: str) -> dict[str, Any]:
        """The job once it ended, through the API's long poll (as `tether job show --follow`):
        one request answered when the job ends, so the platform's CPU is the transfer's, not
        answering polls."""
        while True:
            answer = await self.platform.http.get(
                f"/api/v1/jobs/{job_id}/output", params={"after": 0, "wait": 30}
            )
            answer.raise_for_status()
            job: dict[str, Any] = answer.json()["job"]
            if job["state"] in TERMINAL:
                return job

    def stored(self, sha256: str) -> Path:
        return self.data / "files" / "sha256" / sha256[:2] / sha256[2:]

    async def download(self, job_id: str, target: Path, expected: str) -> float:
        """What `tether get` does after the job: find the retrieved file in the library and
        stream it into `target` (hashed, written, fsynced); seconds."""
        http = self.platform.http
        started = time.perf_counter()
        (entry,) = (await http.get("/api/v1/files", params={"job": job_id})).json()
        digest = hashlib.sha256()
        with target.open("wb") as out:
            async with http.stream("GET", f"/api/v1/files/{entry['id']}/content") as answer:
                answer.raise_for_status()
                async for chunk in answer.aiter_bytes(BLOCK):
                    out.write(chunk)
                    digest.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        seconds = time.perf_counter() - started
        if digest.hexdigest() != expected:
            raise RuntimeError(f"The download of job {job_id} does not hash to {expected}")
        target.unlink()
        return seconds

    async def deploy(self, sha256: str, size: int, target: Path) -> Retrieval:
        """files.put of library file `sha256` to `target`: timed from submission to
        `succeeded`, memory and CPU sampled as for a retrieval; the file is checked and removed."""
        assert self.agent is not None
        http = self.platform.http
        plat_ps, agent_ps = self.platform.proc.ps, self.agent.ps
        platform_rss, agent_rss = [tree_rss(plat_ps)], [tree_rss(agent_ps)]
        cpu0 = (tree_cpu(plat_ps), tree_cpu(agent_ps))
        started = time.perf_counter()
        response = await http.post(
            "/api/v1/jobs",
            json={
                "action": "files.put",
                "args": {"sha256": sha256, "size": size, "path": str(target), "overwrite": True},
                "hosts": [self.host_id],
            },
        )
        response.raise_for_status()
        job_id = response.json()["jobs"][0]["id"]

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.5)
                platform_rss.append(tree_rss(plat_ps))
                agent_rss.append(tree_rss(agent_ps))

        sampler = asyncio.create_task(sample())
        try:
            job = await self.wait_for_end(job_id)
        finally:
            sampler.cancel()
        seconds = time.perf_counter() - started
        cpu1 = (tree_cpu(plat_ps), tree_cpu(agent_ps))
        if job["state"] != "succeeded":
            raise RuntimeError(f"files.put ended {job['state']}: {job}")
        if await asyncio.to_thread(sha256_of, target) != sha256:
            raise RuntimeError(f"The deployed {target} does not hash to {sha256}")
        target.unlink()
        return Retrieval(
            size, seconds, platform_rss, agent_rss, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], job_id
        )

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop(20)
        if self.platform.child is not None:
            await self.platform.stop()
        await self.platform.http.aclose()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as handle:
        buffer = bytearray(BLOCK)
        while n := handle.readinto(buffer):
            digest.update(memoryview(buffer)[:n])
    return digest.hexdigest()


def sha256_rate(size: int = 1024 * MiB) -> float:
    """Bytes per second SHA-256 hashes in memory on one core (1 MiB updates)."""
    block = memoryview(os.urandom(BLOCK))
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(size // BLOCK):
        digest.update(block)
    return size / (time.perf_counter() - started)


def local_copy_seconds(source: Path, target: Path) -> float:
    """The second leg of a plain `tether get`: read, SHA-256, write, fsync on one machine."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK)
    with source.open("rb", buffering=0) as src, target.open("wb", buffering=0) as dst:
        while count := src.readinto(buffer):
            view = memoryview(buffer)[:count]
            digest.update(view)
            dst.write(view)
        os.fsync(dst.fileno())
    digest.hexdigest()
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def disk_seconds(path: Path, size: int) -> float:
    """Seconds to write `size` bytes from memory to `path` and fsync; the file is removed."""
    block = memoryview(os.urandom(BLOCK))
    started = time.perf_counter()
    with path.open("wb", buffering=0) as handle:
        left = size
        while left > 0:
            left -= handle.write(block[: min(BLOCK, left)])
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def write_random(path: Path, size: int) -> str:
    """A file of `size` incompressible bytes; returns its SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(16 * MiB)
    with path.open("wb") as handle:
        written, n = 0, 0
        while written < size:
            # Rotate the block so no two 16 MiB stretches are the same.
            chunk = (block[n % len(block) :] + block[: n % len(block)])[: size - written]
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 4099
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


# --- The run and the report. -------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    size: int
    small_size: int
    runs: int
    raw_s: list[float] = dataclasses.field(default_factory=list)
    copy_s: list[float] = dataclasses.field(default_factory=list)
    # The transport alone: the agent's engine sending the file over the real WebSocket and TLS
    # to the platform's engine, which hashes and discards (no disk).
    transport_s: list[float] = dataclasses.field(default_factory=list)
    get_s: list[float] = dataclasses.field(default_factory=list)
    # `tether get`'s second leg: the library file downloaded through the API into a local file.
    download_s: list[float] = dataclasses.field(default_factory=list)
    # Its plain counterpart: the same file copied locally (read, SHA-256, write, fsync).
    local_s: list[float] = dataclasses.field(default_factory=list)
    put_s: list[float] = dataclasses.field(default_factory=list)
    put_platform_cpu_s: list[float] = dataclasses.field(default_factory=list)
    put_agent_cpu_s: list[float] = dataclasses.field(default_factory=list)
    put_platform_rss: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    put_agent_rss: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    # The disk alone: the size written from memory in 1 MiB writes, then fsync.
    disk_s: list[float] = dataclasses.field(default_factory=list)
    platform_cpu_s: list[float] = dataclasses.field(default_factory=list)
    agent_cpu_s: list[float] = dataclasses.field(default_factory=list)
    # Per run: RSS at submission and the peak while the transfer ran, bytes.
    platform_rss: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    agent_rss: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    small_s: float = math.nan
    small_platform_rss: tuple[int, int] = (0, 0)
    small_agent_rss: tuple[int, int] = (0, 0)
    tls: str = ""
    # SHA-256 alone, in memory, one core: the ceiling of anything that hashes on one thread.
    sha256_rate: float = math.nan
    load: list[float] = dataclasses.field(default_factory=list)
    date: str = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )

    def rate(self, seconds: list[float]) -> float:
        return self.size / statistics.median(seconds) if seconds else math.nan

    def ratios(self, baseline_s: list[float], measured: list[float] | None = None) -> list[float]:
        """files.get's (or `measured`'s) rate over the baseline's, run by run (each pair ran in
        the same run)."""
        mine = self.get_s if measured is None else measured
        return [b / g for g, b in zip(mine, baseline_s, strict=True)]


def mb(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value / 1e6:.0f} MB/s"


def mib(value: int) -> str:
    return f"{value / MiB:.0f} MiB"


async def run(args: argparse.Namespace) -> Figures:
    size = int(args.size_gib * 1024**3)
    small = args.small_mib * MiB
    figures = Figures(size=size, small_size=small, runs=args.runs)
    work = Path(tempfile.mkdtemp(prefix="tether-transfer-", dir=args.dir))
    bench = Bench(work)
    try:
        source = work / "evidence.bin"
        load.log(f"writing {size / 1e9:.2f} GB of random bytes to {source}")
        expected = await asyncio.to_thread(write_random, source, size)
        small_source = work / "small.bin"
        small_expected = await asyncio.to_thread(write_random, small_source, small)
        figures.sha256_rate = sha256_rate()
        load.log(f"SHA-256 alone, one core: {mb(figures.sha256_rate)}")
        await bench.start()
        load.log(
            f"platform pid {bench.platform.proc.pid}, agent pid {bench.agent and bench.agent.pid}"
        )
        # One unmeasured retrieval of the small file first: first use of every code path.
        await bench.retrieve(small_source, small, small_expected)
        bench.stored(small_expected).unlink()
        sink = work / "baseline-copy.bin"
        for n in range(args.runs):
            figures.load.append(os.getloadavg()[0])
            raw = await baseline("raw", size=size, source=source, sink=sink, bench=bench)
            figures.raw_s.append(raw["seconds"])
            figures.tls = f"{raw['tls']} {raw['cipher']}"
            moved = await baseline("engine", size=size, source=source, sink=sink, bench=bench)
            if moved["sha256"] != expected:
                raise RuntimeError("The transport's hash does not match the file's")
            figures.transport_s.append(moved["seconds"])
            copy = await baseline("disk", size=size, source=source, sink=sink, bench=bench)
            if copy["sha256"] != expected:
                raise RuntimeError("The baseline copy's hash does not match the file's")
            figures.copy_s.append(copy["seconds"])
            figures.disk_s.append(await asyncio.to_thread(disk_seconds, sink, size))
            got = await bench.retrieve(
                source, size, expected, profile=args.profile if n == 0 else None
            )
            figures.get_s.append(got.seconds)
            # `tether get`'s second leg right after (and its plain counterpart), then files.put
            # of the same library file back to the endpoint.
            figures.download_s.append(await bench.download(got.job_id, sink, expected))
            figures.local_s.append(
                await asyncio.to_thread(local_copy_seconds, bench.stored(expected), sink)
            )
            put = await bench.deploy(expected, size, work / "deployed.bin")
            figures.put_s.append(put.seconds)
            figures.put_platform_cpu_s.append(put.platform_cpu_s)
            figures.put_agent_cpu_s.append(put.agent_cpu_s)
            figures.put_platform_rss.append((put.platform_rss[0], max(put.platform_rss)))
            figures.put_agent_rss.append((put.agent_rss[0], max(put.agent_rss)))
            # The next run must store it again, and the disk holds one copy at a time.
            bench.stored(expected).unlink()
            figures.platform_cpu_s.append(got.platform_cpu_s)
            figures.agent_cpu_s.append(got.agent_cpu_s)
            figures.platform_rss.append((got.platform_rss[0], max(got.platform_rss)))
            figures.agent_rss.append((got.agent_rss[0], max(got.agent_rss)))
            load.log(
                f"run {n + 1}: raw TLS {mb(size / raw['seconds'])} ({raw['seconds']:.2f} s), "
                f"transport alone {mb(size / moved['seconds'])}, "
                f"copy {mb(size / copy['seconds'])} ({copy['seconds']:.2f} s), disk alone "
                f"{mb(size / figures.disk_s[-1])}, files.get "
                f"{mb(got.rate)} ({got.seconds:.2f} s; CPU platform {got.platform_cpu_s:.1f} s, "
                f"agent {got.agent_cpu_s:.1f} s); RSS platform {mib(got.platform_rss[0])} -> "
                f"peak {mib(max(got.platform_rss))}, agent {mib(got.agent_rss[0])} -> peak "
                f"{mib(max(got.agent_rss))}; download {figures.download_s[-1]:.2f} s, local "
                f"copy {figures.local_s[-1]:.2f} s; files.put {mb(put.rate)} ({put.seconds:.2f} "
                f"s; CPU platform {put.platform_cpu_s:.1f} s, agent {put.agent_cpu_s:.1f} s); "
                f"load {figures.load[-1]:.1f}"
            )
        got = await bench.retrieve(small_source, small, small_expected)
        bench.stored(small_expected).unlink()
        figures.small_s = got.seconds
        figures.small_platform_rss = (got.platform_rss[0], max(got.platform_rss))
        figures.small_agent_rss = (got.agent_rss[0], max(got.agent_rss))
        load.log(
            f"small file {small / MiB:.0f} MiB: {mb(got.rate)}; RSS platform "
            f"{mib(got.platform_rss[0])} -> peak {mib(max(got.platform_rss))}, agent "
            f"{mib(got.agent_rss[0])} -> peak {mib(max(got.agent_rss))}"
        )
    finally:
        await bench.stop()
        if args.keep:
            load.log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return figures


def growth(pairs: list[tuple[int, int]]) -> int:
    return max((peak - start for start, peak in pairs), default=0)


def rows(f: Figures) -> list[tuple[str, str, str, str, str]]:
    raw, copy, got = f.rate(f.raw_s), f.rate(f.copy_s), f.rate(f.get_s)
    med = statistics.median
    # The machine is shared: compare each transfer with the baselines of its own run.
    to_raw, to_copy = med(f.ratios(f.raw_s)), med(f.ratios(f.copy_s))
    copy_to_raw = med(r / c for r, c in zip(f.raw_s, f.copy_s, strict=True))
    # `tether get` end to end: files.get + the download, against (b) + a local copy.
    e2e = [g + d for g, d in zip(f.get_s, f.download_s, strict=True)]
    plain = [c + loc for c, loc in zip(f.copy_s, f.local_s, strict=True)]
    e2e_ratios = f.ratios(plain, e2e)
    put_ratios = f.ratios(f.copy_s, f.put_s)

    def runs(values: list[float]) -> str:
        return "runs " + ", ".join(f"{v:.2f}" for v in values)

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**MISS**"

    def per_gb(seconds: list[float]) -> float:
        return med(seconds) / f.size * 1e9 if seconds else math.nan

    cpu = {
        "get": (per_gb(f.platform_cpu_s), per_gb(f.agent_cpu_s)),
        "put": (per_gb(f.put_platform_cpu_s), per_gb(f.put_agent_cpu_s)),
    }
    plat_growth = max(growth(f.platform_rss), growth(f.put_platform_rss))
    agent_growth = max(growth(f.agent_rss), growth(f.put_agent_rss))
    small_plat = f.small_platform_rss[1] - f.small_platform_rss[0]
    small_agent = f.small_agent_rss[1] - f.small_agent_rss[0]
    # Flat: what the transfer adds stays small and does not grow with the file.
    flat = max(plat_growth, agent_growth) <= 64 * MiB and (
        plat_growth <= small_plat + 16 * MiB and agent_growth <= small_agent + 16 * MiB
    )
    gib = f"{f.size / 1024**3:g} GiB"
    table = [
        (
            f"files.get of {gib} vs a plain TLS copy doing the same work (b: read, SHA-256, "
            "write, fsync)",
            ">= 0.8 of (b)",
            f"{mb(got)} (b: {mb(copy)}, itself {copy_to_raw:.2f} of a)",
            f"{to_copy:.3f} of (b) ({runs(f.ratios(f.copy_s))})",
            verdict(to_copy >= 0.8),
        ),
        (
            f"`tether get` of {gib} end to end (files.get, then the download into a local file) "
            "vs plain copies doing the same work ((b), then a local read, SHA-256, write, fsync)",
            ">= 0.8 of the plain copies",
            f"{f.size / med(e2e) / 1e6:.0f} MB/s (plain: {f.size / med(plain) / 1e6:.0f} MB/s)",
            f"{med(e2e_ratios):.3f} ({runs(e2e_ratios)})",
            verdict(med(e2e_ratios) >= 0.8),
        ),
        (
            f"files.put of {gib} (library to endpoint, verified on the endpoint's disk) vs (b)",
            ">= 0.8 of (b)",
            f"{mb(f.rate(f.put_s))} (b: {mb(copy)})",
            f"{med(put_ratios):.3f} of (b) ({runs(put_ratios)})",
            verdict(med(put_ratios) >= 0.8),
        ),
    ]
    for action, (plat, agent) in cpu.items():
        table.append(
            (
                f"CPU per GB of files.{action}, each side",
                "<= 1.5 s per GB",
                f"platform {plat:.2f} s, agent {agent:.2f} s",
                f"{max(plat, agent) / 1.5:.2f} of 1.5 s",
                verdict(max(plat, agent) <= 1.5),
            )
        )
    transport = f.ratios(f.raw_s, f.transport_s)
    table += [
        (
            f"The transport alone, {gib} (the agent's engine reading the file, over the real "
            "WebSocket and TLS, to the platform's engine hashing and discarding) vs raw "
            "loopback TLS (a)",
            ">= 0.5 of (a)",
            f"{mb(f.rate(f.transport_s))} (a: {mb(raw)})",
            f"{med(transport):.3f} of (a) ({runs(transport)})",
            verdict(med(transport) >= 0.5),
        ),
        (
            f"files.get of {gib} vs raw loopback TLS (a), for reference (hashed, on disk, fsynced "
            "every MiB)",
            "-",
            f"{mb(got)} (a: {mb(raw)})",
            f"{to_raw:.3f} of (a) ({runs(f.ratios(f.raw_s))})",
            "-",
        ),
        (
            f"Memory during a {gib} retrieval and deployment (peak - start, worst run)",
            f"flat: <= 64 MiB and no more than a {f.small_size / MiB:.0f} MiB file's + 16 MiB",
            f"platform +{mib(plat_growth)} (start {mib(f.platform_rss[0][0])}), agent "
            f"+{mib(agent_growth)} (start {mib(f.agent_rss[0][0])}); {f.small_size / MiB:.0f} "
            f"MiB file: platform +{mib(small_plat)}, agent +{mib(small_agent)}",
            f"{max(plat_growth, agent_growth) / (64 * MiB):.2f} of 64 MiB",
            verdict(flat),
        ),
    ]
    return table


def report(f: Figures, command: str) -> str:
    info = load.machine()
    gib = f"{f.size / 1024**3:g} GiB"
    med = statistics.median
    lines = [
        "## File transfer end to end (`benchmarks/transfer.py`)",
        "",
        "Written by `benchmarks/transfer.py` from its latest real run.",
        "",
        f"- Date: {f.date} (start of the run)",
        f"- Machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} memory, "
        f"{info['kernel']}; Python {info['python']}, {info['openssl']}",
        "- Machine load (1-minute load average, 2 CPUs, shared with other work) at the start of "
        "each run: " + ", ".join(f"{v:.1f}" for v in f.load),
        f"- Negotiated TLS (baselines; same contexts as the agent port): {f.tls}",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
        f"Medians of {len(f.get_s)} runs of {gib} ({f.size / 1e9:.2f} GB). Throughputs are "
        "the median run's; ratios are the median of each run's files.get against the baselines "
        "of the same run.",
        "",
        "| figure | target | measured | ratio | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(f)]
    lines += [
        "",
        "### Every run",
        "",
        "| run | load | (a) raw TLS | transport alone | (b) plain copy | disk alone (write + fsync) | files.get | "
        "download | local copy | files.put | get CPU platform / agent | put CPU platform / "
        "agent | get RSS platform, agent (start -> peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in range(len(f.get_s)):
        disk = f"{f.disk_s[n]:.2f} s" if n < len(f.disk_s) else "n/a"
        lines.append(
            f"| {n + 1} | {f.load[n]:.1f} | {f.raw_s[n]:.2f} s | {f.transport_s[n]:.2f} s | "
            f"{f.copy_s[n]:.2f} s | {disk} | "
            f"{f.get_s[n]:.2f} s | {f.download_s[n]:.2f} s | {f.local_s[n]:.2f} s | "
            f"{f.put_s[n]:.2f} s | {f.platform_cpu_s[n]:.1f} s / {f.agent_cpu_s[n]:.1f} s | "
            f"{f.put_platform_cpu_s[n]:.1f} s / {f.put_agent_cpu_s[n]:.1f} s | "
            f"{mib(f.platform_rss[n][0])} -> {mib(f.platform_rss[n][1])}, "
            f"{mib(f.agent_rss[n][0])} -> {mib(f.agent_rss[n][1])} |"
        )
    lines += [
        "",
        f"CPU per GB moved by files.get (median): platform {med(f.platform_cpu_s) / f.size * 1e9:.2f} s, "
        f"agent {med(f.agent_cpu_s) / f.size * 1e9:.2f} s; by files.put: platform "
        f"{med(f.put_platform_cpu_s) / f.size * 1e9:.2f} s, agent "
        f"{med(f.put_agent_cpu_s) / f.size * 1e9:.2f} s. Small file ({f.small_size / MiB:.0f} MiB): "
        f"{f.small_s:.2f} s. SHA-256 alone on one core, in memory, same run: "
        f"{mb(f.sha256_rate)}; the disk alone (the size written from memory and fsynced, "
        f"median): {mb(f.rate(f.disk_s))}.",
        "",
        "### What was measured, and how",
        "",
        "- A random file in a temporary directory; the platform's data directory (SQLite, "
        "`<data>/files`) in the same directory, so on the same disk. The file was just written, "
        "so the agent and baseline (b) read it from the page cache alike.",
        "- `tether server run` and `tether agent run` as real processes; the agent enrolled with a "
        "one-use token into segment `bench` with Active Response on; the first admin logged in "
        "with its TOTP second factor (`load.Platform.login`).",
        '- files.get: POST /api/v1/jobs `{"action": "files.get", "args": {"path": ..., '
        '"max_bytes": size}, "hosts": [host]}`, then the long poll GET '
        "/api/v1/jobs/ID/output?wait=30 until a terminal state (answered when the job ends); the "
        "time is from before the POST to seeing `succeeded`. The job's "
        "SHA-256 must match the file's, and the stored blob "
        "`<data>/files/sha256/..` is hashed again off the clock and then removed (so each run "
        "stores the file anew). One unmeasured small retrieval warms the code paths first.",
        "- (a) and (b): two fresh processes each over 127.0.0.1, blocking sockets, the receiver "
        "with the agent port's server context (`agent_ssl_context`, the platform's certificate) "
        "and the sender with the real agent's client context and identity, so the same TLS "
        "version and cipher. 1 MiB writes and reads. (a): the sender sends from memory, the "
        "receiver discards. (b): the sender reads the file, the receiver hashes, writes and "
        "fsyncs at the end. Timed in the receiver from the completed handshake to the last byte "
        "(and the fsync). The measurements alternate within each run: (a), (b), files.get, "
        "the download, the local copy, files.put.",
        "- The transport alone: two fresh processes as for (a), on uvloop, the sender running the "
        "agent's transfer engine (`AgentTransfers.send_file` of the file, read from the page "
        "cache and hashed) over a websockets client connection with the agent's options and "
        "identity, the receiver the platform's engine (`TransferBook`, `Receiver`) behind a "
        "websockets server with the agent port's options, its sink hashing each chunk in a "
        "worker thread and keeping nothing. Timed in the receiver from the open to the verified "
        "end.",
        "- `tether get` end to end is files.get plus what the CLI does next: GET "
        "/api/v1/files?job=ID and the streamed GET /api/v1/files/ID/content into a local file, "
        "hashed and fsynced (the CLI's own bar and its rename left out). Its plain counterpart "
        "is (b) plus a local copy of the stored file (read, SHA-256, write, fsync).",
        "- files.put: POST /api/v1/jobs `files.put` of the retrieved library file back to the "
        "endpoint (`overwrite`), followed with the same long poll to `succeeded`; the written "
        "file is hashed "
        "off the clock and removed. Compared with (b), which does the same work.",
        "- The platform's CPU includes the one long poll per transfer and the progress writes "
        "(one UPDATE a second).",
        "- Memory: psutil RSS of the platform process and of the agent process (with any "
        "children) at submission and every 0.5 s until the job ended; growth = peak - start.",
        "- The 50% target is for the transfer through the platform, which never happens without "
        "its hashing and its disk writes; so it is shown two ways: against (a) (strict) and "
        "against (b) (like for like: the copy does the same hashing, disk and fsync).",
        "",
    ]
    findings = HERE / "transfer_findings.md"
    if findings.is_file():
        lines += [findings.read_text().rstrip(), ""]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="File retrieval benchmark (module docstring).")
    parser.add_argument("--size-gib", type=float, default=3.0)
    parser.add_argument("--small-mib", type=int, default=256, help="the memory comparison file")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary files go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy both processes during the first run's files.get, into this folder",
    )
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument("--no-report", action="store_true", help="print only (trial runs)")
    parser.add_argument(
        "--rerender",
        type=Path,
        default=None,
        help="rewrite the report from saved figures (benchmarks/out/transfer-figures.json)",
    )
    # Internal: the baselines' two sides run this file in their own processes.
    parser.add_argument("--role", choices=["receive", "send"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--mode", choices=["raw", "disk", "engine"], default="raw", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.role is not None and args.mode == "engine":
        engine_once(args)
        return
    if args.role == "receive":
        serve_once(args)
        return
    if args.role == "send":
        send_once(args)
        return
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/transfer.py", *sys.argv[1:]]
    )
    saved = HERE / "out" / "transfer-figures.json"
    if args.rerender:
        stored = json.loads(args.rerender.read_text())
        command = stored.pop("command")
        for key in ("platform_rss", "agent_rss", "put_platform_rss", "put_agent_rss"):
            stored[key] = [tuple(p) for p in stored[key]]
        for key in ("small_platform_rss", "small_agent_rss"):
            stored[key] = tuple(stored[key])
        figures = Figures(**stored)
    else:
        # SIGTERM (and SIGINT, even when started in the background) ends the run through its
        # cleanup: the platform and agent stopped, the temporary files removed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        figures = asyncio.run(run(args))
        if not args.no_report:  # a trial run leaves the report's figures as they were
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({**dataclasses.asdict(figures), "command": command}))
    for name, target, measured, ratio, verdict in rows(figures):
        print(f"- {name}: {measured} (target {target}; {ratio}) {verdict}")
    if not args.no_report:
        sections.write_section(args.report, "transfer", report(figures, command))
        load.log(f"report written to {args.report}")


if __name__ == "__main__":
    main()
