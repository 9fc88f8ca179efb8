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
            *(["--file", str(source)] if mode == "disk" else []),
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
            job: dict[str, Any] = {}
            while True:
                job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
                if job["state"] in TERMINAL:
                    break
                await asyncio.sleep(0.05)
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
        stored = self.data / "files" / "sha256" / expected[:2] / expected[2:]
        if await asyncio.to_thread(sha256_of, stored) != expected:
            raise RuntimeError(f"The stored blob {stored} does not hash to {expected}")
        # The next run must store it again, and the disk holds one copy at a time.
        stored.unlink()
        return Retrieval(
            size, seconds, platform_rss, agent_rss, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
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
    get_s: list[float] = dataclasses.field(default_factory=list)
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

    def ratios(self, baseline_s: list[float]) -> list[float]:
        """files.get's rate over the baseline's, run by run (each pair ran back to back)."""
        return [b / g for g, b in zip(self.get_s, baseline_s, strict=True)]


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
        sink = work / "baseline-copy.bin"
        for n in range(args.runs):
            figures.load.append(os.getloadavg()[0])
            raw = await baseline("raw", size=size, source=source, sink=sink, bench=bench)
            figures.raw_s.append(raw["seconds"])
            figures.tls = f"{raw['tls']} {raw['cipher']}"
            copy = await baseline("disk", size=size, source=source, sink=sink, bench=bench)
            if copy["sha256"] != expected:
                raise RuntimeError("The baseline copy's hash does not match the file's")
            figures.copy_s.append(copy["seconds"])
            figures.disk_s.append(await asyncio.to_thread(disk_seconds, sink, size))
            got = await bench.retrieve(
                source, size, expected, profile=args.profile if n == 0 else None
            )
            figures.get_s.append(got.seconds)
            figures.platform_cpu_s.append(got.platform_cpu_s)
            figures.agent_cpu_s.append(got.agent_cpu_s)
            figures.platform_rss.append((got.platform_rss[0], max(got.platform_rss)))
            figures.agent_rss.append((got.agent_rss[0], max(got.agent_rss)))
            load.log(
                f"run {n + 1}: raw TLS {mb(size / raw['seconds'])} ({raw['seconds']:.2f} s), "
                f"copy {mb(size / copy['seconds'])} ({copy['seconds']:.2f} s), disk alone "
                f"{mb(size / figures.disk_s[-1])}, files.get "
                f"{mb(got.rate)} ({got.seconds:.2f} s; CPU platform {got.platform_cpu_s:.1f} s, "
                f"agent {got.agent_cpu_s:.1f} s); RSS platform {mib(got.platform_rss[0])} -> "
                f"peak {mib(max(got.platform_rss))}, agent {mib(got.agent_rss[0])} -> peak "
                f"{mib(max(got.agent_rss))}; load {figures.load[-1]:.1f}"
            )
        got = await bench.retrieve(small_source, small, small_expected)
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
    # The machine is shared: compare each retrieval with the baselines of its own run.
    to_raw, to_copy = statistics.median(f.ratios(f.raw_s)), statistics.median(f.ratios(f.copy_s))
    copy_to_raw = statistics.median(r / c for r, c in zip(f.raw_s, f.copy_s, strict=True))

    def runs(values: list[float]) -> str:
        return "runs " + ", ".join(f"{v:.2f}" for v in values)

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**MISS**"

    plat_growth, agent_growth = growth(f.platform_rss), growth(f.agent_rss)
    small_plat = f.small_platform_rss[1] - f.small_platform_rss[0]
    small_agent = f.small_agent_rss[1] - f.small_agent_rss[0]
    # Flat: what the transfer adds stays small and does not grow with the file.
    flat = max(plat_growth, agent_growth) <= 64 * MiB and (
        plat_growth <= small_plat + 16 * MiB and agent_growth <= small_agent + 16 * MiB
    )
    gib = f"{f.size / 1024**3:g} GiB"
    return [
        (
            f"files.get of {gib} (hashed, on disk) vs raw loopback TLS (a)",
            ">= 30% of (a)",
            f"{mb(got)} (a: {mb(raw)})",
            f"{to_raw:.3f} of (a) ({runs(f.ratios(f.raw_s))})",
            verdict(to_raw >= 0.30),
        ),
        (
            f"files.get of {gib} through the platform vs raw loopback TLS (a), strict reading",
            ">= 50% of (a)",
            f"{mb(got)} (a: {mb(raw)})",
            f"{to_raw:.3f} of (a) ({runs(f.ratios(f.raw_s))})",
            verdict(to_raw >= 0.50),
        ),
        (
            f"files.get of {gib} vs a plain TLS copy doing the same work (b: read, SHA-256, "
            "write, fsync)",
            ">= 50% of (b)",
            f"{mb(got)} (b: {mb(copy)}, itself {copy_to_raw:.2f} of a)",
            f"{to_copy:.3f} of (b) ({runs(f.ratios(f.copy_s))})",
            verdict(to_copy >= 0.50),
        ),
        (
            f"Memory during a {gib} retrieval (peak - start, worst run)",
            f"flat: <= 64 MiB and no more than a {f.small_size / MiB:.0f} MiB file's + 16 MiB",
            f"platform +{mib(plat_growth)} (start {mib(f.platform_rss[0][0])}), agent "
            f"+{mib(agent_growth)} (start {mib(f.agent_rss[0][0])}); {f.small_size / MiB:.0f} "
            f"MiB file: platform +{mib(small_plat)}, agent +{mib(small_agent)}",
            f"{max(plat_growth, agent_growth) / (64 * MiB):.2f} of 64 MiB",
            verdict(flat),
        ),
    ]


def report(f: Figures, command: str) -> str:
    info = load.machine()
    gib = f"{f.size / 1024**3:g} GiB"
    med = statistics.median
    lines = [
        "## File retrieval end to end (`benchmarks/transfer.py`)",
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
        "| run | (a) raw TLS | (b) plain copy | disk alone (write + fsync) | files.get | "
        "platform CPU | agent CPU | platform RSS start -> peak | agent RSS start -> peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in range(len(f.get_s)):
        disk = f"{f.disk_s[n]:.2f} s" if n < len(f.disk_s) else "n/a"
        lines.append(
            f"| {n + 1} | {f.raw_s[n]:.2f} s | {f.copy_s[n]:.2f} s | {disk} | {f.get_s[n]:.2f} s | "
            f"{f.platform_cpu_s[n]:.1f} s | {f.agent_cpu_s[n]:.1f} s | "
            f"{mib(f.platform_rss[n][0])} -> {mib(f.platform_rss[n][1])} | "
            f"{mib(f.agent_rss[n][0])} -> {mib(f.agent_rss[n][1])} |"
        )
    lines += [
        "",
        f"CPU per GB moved by files.get (median): platform {med(f.platform_cpu_s) / f.size * 1e9:.2f} s, "
        f"agent {med(f.agent_cpu_s) / f.size * 1e9:.2f} s. Small file ({f.small_size / MiB:.0f} MiB): "
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
        '"max_bytes": size}, "hosts": [host]}`, then GET /api/v1/jobs/ID every 50 ms until '
        "a terminal state; the time is from before the POST to seeing `succeeded`. The job's "
        "SHA-256 must match the file's, and the stored blob "
        "`<data>/files/sha256/..` is hashed again off the clock and then removed (so each run "
        "stores the file anew). One unmeasured small retrieval warms the code paths first.",
        "- (a) and (b): two fresh processes each over 127.0.0.1, blocking sockets, the receiver "
        "with the agent port's server context (`agent_ssl_context`, the platform's certificate) "
        "and the sender with the real agent's client context and identity, so the same TLS "
        "version and cipher. 1 MiB writes and reads. (a): the sender sends from memory, the "
        "receiver discards. (b): the sender reads the file, the receiver hashes, writes and "
        "fsyncs at the end. Timed in the receiver from the completed handshake to the last byte "
        "(and the fsync). The three measurements alternate within each run: (a), (b), files.get.",
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
    parser.add_argument("--mode", choices=["raw", "disk"], default="raw", help=argparse.SUPPRESS)
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
        for key in ("platform_rss", "agent_rss"):
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
