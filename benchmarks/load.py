"""Load harness: one Tether platform process against N simulated agents, figures in a report.

    .venv/bin/python benchmarks/load.py --agents 10000

Steps (all on 127.0.0.1, every process started here is stopped here):
  1. `tether server init` in the work directory (once), enroll the fleet (once; cached on disk).
  2. Baseline: a bare websockets-on-uvloop mTLS server (baseline_server.py) takes the same N
     connections from the same simulators: per-connection RSS and handshake rate on this machine
     today.
  3. Platform: `tether server run` as one subprocess; RSS with 0 and N agents connected, idle
     CPU over a window, fan-out of `system.noop` to all N (POST /api/v1/hosts/ping, repeated),
     then a reconnect storm (SIGTERM, start again, time until all N are back). Round trips of a
     trivial action to one host (POST /api/v1/hosts/ping naming it, sequential, timed at the
     client) with only that agent connected, and again after the idle phase with all N.
  4. The figures are printed and written to their section of docs/performance.md (sections.py).
"""

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

import fleet
import sections

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
TETHER = str(VENV_BIN / "tether")
PYTHON = sys.executable

# Peer figures from DESIGN.md section 9, measured on the 2-core machines here.
PEER_KIB_PER_CONNECTION = 51.0
PEER_HANDSHAKES_PER_CORE = 450.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20
    for limit in (wanted, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the harness dies (Linux), own process group."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A process started by the harness, stopped by it."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.ps = psutil.Process(proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    async def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait, SIGKILL if needed; returns seconds until the process was gone."""
        started = time.perf_counter()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                log(f"{self.name} did not stop in {timeout:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return time.perf_counter() - started


async def spawn(name: str, argv: list[str], logfile: Path, **kwargs: Any) -> Child:
    handle = logfile.open("ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=kwargs.pop("stdout", handle),
            stderr=handle,
            preexec_fn=_die_with_parent,
            **kwargs,
        )
    finally:
        handle.close()
    return Child(name, proc)


@dataclasses.dataclass
class Ports:
    api: int
    agent: int
    baseline: int


class Simulators:
    """The simulator processes and the sum of their latest counters."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.latest: dict[int, dict[str, Any]] = {}
        self._readers: list[asyncio.Task[None]] = []

    async def start(
        self,
        *,
        fleet_dir: Path,
        agents: int,
        processes: int,
        url: str,
        mode: str,
        gate: int,
        logfile: Path,
    ) -> None:
        per = math.ceil(agents / processes)
        for n, first in enumerate(range(0, agents, per)):
            count = min(per, agents - first)
            argv = [
                PYTHON,
                str(HERE / "agent_sim.py"),
                "--fleet",
                str(fleet_dir),
                "--first",
                str(first),
                "--count",
                str(count),
                "--url",
                url,
                "--mode",
                mode,
                "--gate",
                str(gate),
                "--watch-stdin",
            ]
            child = await spawn(
                f"sim{n}",
                argv,
                logfile,
                stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(HERE)},
            )
            self.children.append(child)
            self._readers.append(asyncio.create_task(self._read(n, child)))

    async def _read(self, n: int, child: Child) -> None:
        assert child.proc.stdout is not None
        async for line in child.proc.stdout:
            with contextlib.suppress(ValueError):
                self.latest[n] = json.loads(line)

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.latest.values())

    def counter(self, key: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.latest.values():
            total.update(s.get(key, {}))
        return total

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.total("connected"),
            "welcomed": self.total("welcomed"),
            "attempts": self.total("attempts"),
            "jobs": self.total("jobs"),
            "gave_up": self.total("gave_up"),
            "connect_errors": dict(self.counter("connect_errors")),
            "session_ends": dict(self.counter("session_ends")),
        }

    async def stop(self) -> None:
        for child in self.children:
            if child.proc.stdin is not None:
                child.proc.stdin.close()
        await asyncio.gather(*(c.stop(20) for c in self.children))
        for reader in self._readers:
            reader.cancel()
        self.children.clear()
        self._readers.clear()


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2
) -> float | None:
    """Seconds until `check` held, or None after `timeout`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if await check():
            return time.perf_counter() - started
        await asyncio.sleep(interval)
    return None


class Platform:
    """`tether server run` as one subprocess, and a client of its analyst port."""

    def __init__(
        self, data: Path, ports: Ports, logfile: Path, run_args: list[str] | None = None
    ) -> None:
        self.data = data
        self.ports = ports
        self.logfile = logfile
        # More `server run` options (--role api, ...).
        self.run_args = run_args or []
        self.child: Child | None = None
        self.http = self._client()
        self.token = ""

    def _client(self) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.data / "ca.pem"))
        return httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.ports.api}", verify=context, timeout=120.0
        )

    async def start(self) -> float:
        """Start the process; returns seconds until /healthz answered."""
        self.child = await spawn(
            "platform",
            [
                TETHER,
                "server",
                "run",
                "--data",
                str(self.data),
                "--listen",
                f"127.0.0.1:{self.ports.api}",
                "--agent-listen",
                f"127.0.0.1:{self.ports.agent}",
                *self.run_args,
            ],
            self.logfile,
            env={**os.environ, "TETHER_LOG_FORMAT": "json"},
        )

        async def healthy() -> bool:
            assert self.child is not None
            if self.child.proc.returncode is not None:
                raise RuntimeError(f"The platform exited; see {self.logfile}")
            try:
                return (await self.http.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        took = await wait_for(healthy, 60, 0.05)
        if took is None:
            raise RuntimeError(f"The platform did not answer in 60 s; see {self.logfile}")
        return took

    @property
    def proc(self) -> Child:
        assert self.child is not None
        return self.child

    async def login(self) -> None:
        from tether.server.services.bootstrap import ADMIN_USERNAME

        password = (self.data.parent / "admin-password").read_text().strip()
        response = await self.http.post(
            "/api/v1/auth/login",
            json={"username": ADMIN_USERNAME, "password": password, "client": "api"},
        )
        response.raise_for_status()
        answer = response.json()
        if answer["stage"] == "second_factor":
            # The first admin has a TOTP second factor; init wrote its secret next to the
            # password. Each code is accepted once, so a second login in the same 30 s uses
            # the next step's code (one step of drift is allowed).
            from tether.server.auth.totp import from_base32, time_step, totp

            mfa = json.loads((self.data.parent / "admin-password.mfa.json").read_text())
            step = time_step(time.time())
            # Runs and restarts reuse one admin: remember the step across them on disk.
            used = self.data.parent / "admin-password.last-step"
            last = int(used.read_text()) if used.exists() else None
            if last is not None and step <= last:
                step = last + 1
                while step > time_step(time.time()) + 1:
                    await asyncio.sleep(1)
            used.write_text(f"{step}\n")
            response = await self.http.post(
                "/api/v1/auth/login/mfa",
                json={
                    "token": answer["token"],
                    "code": totp(from_base32(mfa["secret"]), step * 30),
                },
            )
            response.raise_for_status()
            answer = response.json()
        self.token = answer["token"]
        self.http.headers["authorization"] = f"Bearer {self.token}"

    async def connected(self) -> int:
        text = (await self.http.get("/metrics")).text
        match = re.search(r"^tether_agents_connected (\S+)$", text, re.MULTILINE)
        return int(float(match.group(1))) if match else -1

    async def enrollment_token(self, uses: int) -> str:
        # Tokens are issued for existing segments only; a resumed run finds it made (409).
        made = await self.http.post("/api/v1/segments", json={"name": "load"})
        if made.status_code != 409:
            made.raise_for_status()
        response = await self.http.post(
            "/api/v1/enrollment-tokens",
            json={"segment": "load", "uses": uses, "expires_in_seconds": 3 * 3600},
        )
        response.raise_for_status()
        return str(response.json()["token"])

    async def ping(self, timeout: float) -> dict[str, Any]:
        response = await self.http.post("/api/v1/hosts/ping", json={"timeout_seconds": timeout})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def ping_one(self, host_id: str) -> tuple[float, float]:
        """One trivial round trip to one host: (ms at this client, ms the platform reports)."""
        started = time.perf_counter()
        response = await self.http.post(
            "/api/v1/hosts/ping", json={"hosts": [host_id], "timeout_seconds": 5}
        )
        client_ms = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        answer = response.json()
        if answer["answered"] != 1:
            raise RuntimeError(f"The round trip to {host_id} failed: {answer['failed']}")
        return client_ms, float(answer["round_trip_ms_p50"])

    async def stop(self) -> float:
        # An idle keep-alive HTTPS connection holds up the platform's exit for 30 s (uvloop's
        # TLS shutdown timeout: nobody answers its close_notify); close ours first.
        await self.http.aclose()
        self.http = self._client()
        took = await self.proc.stop(60)
        self.child = None
        return took


def init_platform(work: Path, ports: Ports, init_args: list[str] | None = None) -> Path:
    """Create the platform data directory once; a new one invalidates the cached fleet."""
    data = work / "platform"
    if (data / "config.json").is_file():
        return data
    shutil.rmtree(work / "fleet", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            TETHER,
            "server",
            "init",
            "--data",
            str(data),
            "--hostname",
            "127.0.0.1",
            "--listen",
            f"127.0.0.1:{ports.api}",
            "--agent-listen",
            f"127.0.0.1:{ports.agent}",
            "--admin-password-file",
            str(work / "admin-password"),
            *(init_args or []),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return data


@dataclasses.dataclass
class Figures:
    agents: int
    simulators: int
    gate: int
    baseline_rss0: int = 0
    baseline_rssn: int = 0
    baseline_connect_s: float = math.nan
    baseline_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    platform_start_s: float = math.nan
    rss0: int = 0
    rssn: int = 0
    initial_connect_s: float = math.nan
    initial_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    idle_seconds: float = 0.0
    idle_cpu: float = math.nan
    heartbeats_seen: int = 0
    fanout_s: list[float] = dataclasses.field(default_factory=list)
    fanout_wall_s: list[float] = dataclasses.field(default_factory=list)
    fanout_answered: list[int] = dataclasses.field(default_factory=list)
    fanout_rtt_p50_ms: list[float] = dataclasses.field(default_factory=list)
    fanout_cpu_s: list[float] = dataclasses.field(default_factory=list)
    stop_s: float = math.nan
    storm_ready_s: float = math.nan
    storm_s: float = math.nan
    storm_connected: int = 0
    storm_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    storm_gave_up: int = 0
    storm_cpu_s: float = math.nan
    rss_after_storm: int = 0
    # Sequential single-host round trips, ms at the client (and the platform's own hop figure):
    # with only the target agent connected, and with all N connected.
    rtt_alone_ms: list[float] = dataclasses.field(default_factory=list)
    rtt_alone_hop_ms: list[float] = dataclasses.field(default_factory=list)
    rtt_fleet_ms: list[float] = dataclasses.field(default_factory=list)
    rtt_fleet_hop_ms: list[float] = dataclasses.field(default_factory=list)
    # The same kept-alive client, N agents connected: requests that do parts of the round trip's
    # work, ms at the client (name -> samples).
    rtt_parts_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # 1-minute load average of the machine at each phase: it is shared, and it shows.
    load: dict[str, float] = dataclasses.field(default_factory=dict)
    date: str = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )

    @property
    def kib_per_agent(self) -> float:
        return (self.rssn - self.rss0) / 1024 / self.agents

    @property
    def baseline_kib(self) -> float:
        return (self.baseline_rssn - self.baseline_rss0) / 1024 / self.agents

    @property
    def baseline_rate(self) -> float:
        return self.agents / self.baseline_connect_s

    @property
    def storm_rate(self) -> float:
        """Handshakes per second from the moment the new process answered until all were back."""
        return self.agents / (self.storm_s - self.storm_ready_s)

    @property
    def initial_rate(self) -> float:
        return self.agents / self.initial_connect_s


def _not_refused(errors: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in errors.items() if k != "refused"}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def sample_rss(child: Child, samples: int = 5, interval: float = 0.5) -> int:
    values = []
    for _ in range(samples):
        values.append(child.rss())
        await asyncio.sleep(interval)
    return int(statistics.median(values))


async def round_trips(
    plat: Platform, host_id: str, count: int, client_ms: list[float], hop_ms: list[float]
) -> None:
    """`count` sequential round trips to one host over the client's kept-alive connection."""
    for _ in range(5):  # warm-up, not counted: first use of the route and the connection
        await plat.ping_one(host_id)
    for _ in range(count):
        client, hop = await plat.ping_one(host_id)
        client_ms.append(client)
        hop_ms.append(hop)


# Requests doing parts of the round trip's work, to see where its time goes.
ROUND_TRIP_PARTS = (
    ("GET /healthz", "HTTPS alone: no authentication, no database"),
    ("GET /api/v1/hosts/ID", "authentication and the host lookup"),
    ("POST /api/v1/hosts/ping, hosts []", "authentication and the audit record, no agent"),
)


async def round_trip_parts(plat: Platform, host_id: str, count: int) -> dict[str, list[float]]:
    """`count` sequential requests of each of ROUND_TRIP_PARTS; ms at the client."""

    async def healthz() -> httpx.Response:
        return await plat.http.get("/healthz")

    async def host() -> httpx.Response:
        return await plat.http.get(f"/api/v1/hosts/{host_id}")

    async def empty_ping() -> httpx.Response:
        return await plat.http.post("/api/v1/hosts/ping", json={"hosts": [], "timeout_seconds": 5})

    parts: dict[str, list[float]] = {}
    for (name, _), call in zip(ROUND_TRIP_PARTS, (healthz, host, empty_ping), strict=True):
        samples = parts[name] = []
        for n in range(count + 5):
            started = time.perf_counter()
            (await call()).raise_for_status()
            if n >= 5:  # the first five warm up
                samples.append((time.perf_counter() - started) * 1000)
    return parts


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _rtt_summary(values: list[float]) -> str:
    return (
        f"p50 {_fmt(percentile(values, 0.5), '.2f')}, p90 {_fmt(percentile(values, 0.9), '.2f')}, "
        f"p99 {_fmt(percentile(values, 0.99), '.2f')}, max {_fmt(max(values, default=math.nan), '.2f')} ms"
    )


def _host_id(fleet_dir: Path, index: int) -> str:
    identity = json.loads(fleet.state(fleet_dir, index).identity_file.read_text())
    return str(identity["host_id"])


async def run_baseline(
    args: argparse.Namespace, figures: Figures, data: Path, fleet_dir: Path, ports: Ports
) -> None:
    log("baseline: bare websockets-on-uvloop mTLS server")
    figures.load["baseline"] = os.getloadavg()[0]
    logs = args.work_dir / "logs"
    server = await spawn(
        "baseline",
        [
            PYTHON,
            str(HERE / "baseline_server.py"),
            "--port",
            str(ports.baseline),
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
    sims = Simulators()
    try:
        assert server.proc.stdout is not None
        async with asyncio.timeout(30):
            await server.proc.stdout.readline()
        await asyncio.sleep(1)
        figures.baseline_rss0 = await sample_rss(server)
        started = time.perf_counter()
        await sims.start(
            fleet_dir=fleet_dir,
            agents=args.agents,
            processes=figures.simulators,
            url=f"wss://127.0.0.1:{ports.baseline}",
            mode="bare",
            gate=args.gate,
            logfile=logs / "sim-baseline.log",
        )

        async def all_in() -> bool:
            return sims.total("connected") >= figures.agents

        took = await wait_for(all_in, args.connect_timeout, 0.1)
        figures.baseline_connect_s = time.perf_counter() - started if took is not None else math.nan
        figures.baseline_errors = _not_refused(sims.snapshot()["connect_errors"])
        log(
            f"baseline: {sims.total('connected')}/{args.agents} connected in "
            f"{figures.baseline_connect_s:.1f} s, errors {figures.baseline_errors}"
        )
        await asyncio.sleep(args.settle)
        figures.baseline_rssn = await sample_rss(server)
        log(
            f"baseline: RSS {figures.baseline_rss0 / 2**20:.0f} MiB -> "
            f"{figures.baseline_rssn / 2**20:.0f} MiB, {figures.baseline_kib:.1f} KiB/connection"
        )
    finally:
        await sims.stop()
        await server.stop(20)


async def run_platform(
    args: argparse.Namespace, figures: Figures, data: Path, fleet_dir: Path, ports: Ports
) -> None:
    logs = args.work_dir / "logs"
    plat = Platform(data, ports, logs / "platform.log")
    sims = Simulators()
    n: int = args.agents
    try:
        figures.platform_start_s = await plat.start()
        log(f"platform: up in {figures.platform_start_s:.1f} s (pid {plat.proc.pid})")
        await plat.login()
        # Warm the routes measured later so RSS with 0 agents includes their code paths.
        await plat.ping(5)
        await plat.connected()
        await asyncio.sleep(2)
        figures.rss0 = await sample_rss(plat.proc)
        log(f"platform: RSS with 0 agents {figures.rss0 / 2**20:.0f} MiB")

        # Same-run comparison for the round trip: only the target agent connected.
        target = _host_id(fleet_dir, 0)
        if args.round_trips:
            alone = Simulators()
            try:
                await alone.start(
                    fleet_dir=fleet_dir,
                    agents=1,
                    processes=1,
                    url=f"wss://127.0.0.1:{ports.agent}",
                    mode="tether",
                    gate=0,
                    logfile=logs / "sim-alone.log",
                )

                async def one_in() -> bool:
                    return alone.total("connected") >= 1 and await plat.connected() >= 1

                if await wait_for(one_in, 60, 0.1) is None:
                    raise RuntimeError("The single agent did not connect; see the logs.")
                figures.load["round trip (1 agent)"] = os.getloadavg()[0]
                await round_trips(
                    plat, target, args.round_trips, figures.rtt_alone_ms, figures.rtt_alone_hop_ms
                )
                log(f"round trip, 1 agent connected: {_rtt_summary(figures.rtt_alone_ms)}")
            finally:
                await alone.stop()

            async def none_left() -> bool:
                return await plat.connected() == 0

            await wait_for(none_left, 30, 0.1)

        started = time.perf_counter()
        await sims.start(
            fleet_dir=fleet_dir,
            agents=n,
            processes=figures.simulators,
            url=f"wss://127.0.0.1:{ports.agent}",
            mode="tether",
            gate=args.gate,
            logfile=logs / "sim-platform.log",
        )

        async def all_in() -> bool:
            return sims.total("connected") >= n and await plat.connected() >= n

        took = await wait_for(all_in, args.connect_timeout, 0.25)
        figures.initial_connect_s = time.perf_counter() - started if took is not None else math.nan
        figures.initial_errors = _not_refused(sims.snapshot()["connect_errors"])
        log(
            f"platform: {await plat.connected()}/{n} connected in "
            f"{figures.initial_connect_s:.1f} s, errors {figures.initial_errors}"
        )
        if took is None:
            raise RuntimeError("Not every agent connected; see the logs.")
        await asyncio.sleep(args.settle)
        figures.rssn = await sample_rss(plat.proc)
        log(
            f"platform: RSS with {n} agents {figures.rssn / 2**20:.0f} MiB, "
            f"{figures.kib_per_agent:.1f} KiB/agent"
        )

        # Idle CPU: no API calls from here during the window, only the agents' own traffic.
        log(f"platform: idle CPU over {args.idle_seconds:.0f} s")
        figures.load["idle"] = os.getloadavg()[0]
        cpu0, wall0 = plat.proc.cpu(), time.perf_counter()
        await asyncio.sleep(args.idle_seconds)
        cpu1, wall1 = plat.proc.cpu(), time.perf_counter()
        figures.idle_seconds = wall1 - wall0
        figures.idle_cpu = (cpu1 - cpu0) / (wall1 - wall0)
        log(f"platform: idle CPU {figures.idle_cpu * 100:.2f}% of a core")

        if args.round_trips:
            figures.load["round trip (N agents)"] = os.getloadavg()[0]
            await round_trips(
                plat, target, args.round_trips, figures.rtt_fleet_ms, figures.rtt_fleet_hop_ms
            )
            log(f"round trip, {n} agents connected: {_rtt_summary(figures.rtt_fleet_ms)}")
            figures.rtt_parts_ms = await round_trip_parts(plat, target, args.round_trips)
            for name, samples in figures.rtt_parts_ms.items():
                log(f"round trip part, {name}: {_rtt_summary(samples)}")

        for run in range(args.fanout_runs):
            cpu0 = plat.proc.cpu()
            t0 = time.perf_counter()
            result = await plat.ping(60)
            wall = time.perf_counter() - t0
            figures.fanout_cpu_s.append(plat.proc.cpu() - cpu0)
            figures.fanout_s.append(float(result["seconds"]))
            figures.fanout_wall_s.append(wall)
            figures.fanout_answered.append(int(result["answered"]))
            figures.fanout_rtt_p50_ms.append(float(result["round_trip_ms_p50"] or math.nan))
            log(
                f"fan-out {run + 1}: {result['answered']}/{result['asked']} answered in "
                f"{result['seconds']:.2f} s (request {wall:.2f} s), failed {len(result['failed'])}"
            )
            await asyncio.sleep(1)

        figures.load["fan-out"] = os.getloadavg()[0]
        if args.skip_storm:
            return
        # Reconnect storm.
        before = sims.snapshot()
        log("storm: SIGTERM to the platform")
        figures.stop_s = await plat.stop()
        restart = time.perf_counter()
        cpu_base = 0.0
        figures.storm_ready_s = await plat.start()
        cpu_base = plat.proc.cpu()
        await plat.login()

        async def back() -> bool:
            return await plat.connected() >= n and sims.total("connected") >= n

        took = await wait_for(back, args.storm_timeout, 0.25)
        figures.storm_s = time.perf_counter() - restart if took is not None else math.nan
        figures.storm_cpu_s = plat.proc.cpu() - cpu_base
        after = sims.snapshot()
        figures.storm_connected = await plat.connected()
        figures.storm_errors = _not_refused(
            _diff(after["connect_errors"], before["connect_errors"])
        )
        figures.storm_gave_up = after["gave_up"] - before["gave_up"]
        log(
            f"storm: stop took {figures.stop_s:.1f} s; new process answered after "
            f"{figures.storm_ready_s:.1f} s; {figures.storm_connected}/{n} back after "
            f"{figures.storm_s:.1f} s; refused attempts "
            f"{after['connect_errors'].get('refused', 0) - before['connect_errors'].get('refused', 0)}, "
            f"other errors {figures.storm_errors}, gave up {figures.storm_gave_up}"
        )
        figures.load["storm"] = os.getloadavg()[0]
        await asyncio.sleep(args.settle)
        figures.rss_after_storm = await sample_rss(plat.proc)
    finally:
        await sims.stop()
        if plat.child is not None:
            await plat.stop()
        await plat.http.aclose()


async def ensure_fleet(args: argparse.Namespace, data: Path, fleet_dir: Path, ports: Ports) -> None:
    todo = fleet.missing(fleet_dir, args.agents)
    if not todo:
        log(f"fleet: {args.agents} enrolled identities cached in {fleet_dir}")
        return
    log(f"fleet: enrolling {len(todo)} agents (cached for later runs)")
    plat = Platform(data, ports, args.work_dir / "logs" / "enroll.log")
    try:
        await plat.start()
        await plat.login()
        token = await plat.enrollment_token(len(todo))
        started = time.perf_counter()
        done = await fleet.enroll_missing(fleet_dir, args.agents, token, data / "ca.pem")
        log(f"fleet: enrolled {done} in {time.perf_counter() - started:.1f} s")
    finally:
        if plat.child is not None:
            await plat.stop()
        await plat.http.aclose()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    libs = ", ".join(
        f"{p} {_version(p)}"
        for p in ("websockets", "uvloop", "uvicorn", "fastapi", "sqlalchemy", "aiosqlite")
    )
    return {
        "cpus": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "libraries": libs,
    }


def _fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def rows(f: Figures) -> list[tuple[str, str, str, str, str]]:
    """(figure, target, measured, ratio, verdict) for the table."""
    cores = os.cpu_count() or 1
    mem_ok = f.rssn <= 2**30 and f.kib_per_agent <= 100
    fan_median = statistics.median(f.fanout_s) if f.fanout_s else math.nan
    all_answered = bool(f.fanout_answered) and all(a == f.agents for a in f.fanout_answered)
    storm_ok = (
        not math.isnan(f.storm_s)
        and f.storm_s <= 30
        and f.storm_gave_up == 0
        and f.storm_connected == f.agents
    )

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**MISS**"

    rtt_p50 = percentile(f.rtt_fleet_ms, 0.5)
    rtt_p99 = percentile(f.rtt_fleet_ms, 0.99)
    alone_p50 = percentile(f.rtt_alone_ms, 0.5)
    alone_p99 = percentile(f.rtt_alone_ms, 0.99)
    # The budget is a ratio to HTTPS alone in the same run (DESIGN.md section 9, issue 17).
    healthz = f.rtt_parts_ms.get("GET /healthz", [])
    healthz_p50 = percentile(healthz, 0.5)
    healthz_p99 = percentile(healthz, 0.99)
    round_trip = (
        f"Round trip of a trivial action, {f.agents} agents connected (analyst -> platform -> "
        f"agent -> analyst: POST /api/v1/hosts/ping naming one host, {len(f.rtt_fleet_ms)} "
        "sequential, at the client)",
        "p50 <= 3x, p99 <= 5x the same run's GET /healthz",
        _rtt_summary(f.rtt_fleet_ms),
        f"{_fmt(rtt_p50 / healthz_p50, '.2f')}x (p50), {_fmt(rtt_p99 / healthz_p99, '.2f')}x "
        f"(p99) /healthz ({_rtt_summary(healthz)}); "
        f"{_fmt(rtt_p50 / alone_p50, '.2f')}x (p50), {_fmt(rtt_p99 / alone_p99, '.2f')}x (p99) "
        f"same-run with only that agent connected ({_rtt_summary(f.rtt_alone_ms)})",
        verdict(rtt_p50 <= 3 * healthz_p50 and rtt_p99 <= 5 * healthz_p99),
    )
    measured_rows = [
        (
            f"Platform RSS, {f.agents} idle agents",
            "<= 1 GiB",
            f"{f.rssn / 2**20:.0f} MiB (0 agents: {f.rss0 / 2**20:.0f} MiB)",
            f"{f.rssn / 2**30:.2f} of budget",
            verdict(f.rssn <= 2**30),
        ),
        (
            "Platform memory per agent",
            "<= 100 KiB",
            f"{f.kib_per_agent:.1f} KiB",
            f"{f.kib_per_agent / PEER_KIB_PER_CONNECTION:.2f}x peer 51 KiB; "
            f"{f.kib_per_agent / f.baseline_kib:.2f}x same-run bare server "
            f"({f.baseline_kib:.1f} KiB)"
            if f.baseline_kib > 0
            else f"{f.kib_per_agent / PEER_KIB_PER_CONNECTION:.2f}x peer 51 KiB",
            verdict(mem_ok),
        ),
        (
            "Reconnect after restart (new process start to all back)",
            "<= 30 s, none failed",
            f"{_fmt(f.storm_s, '.1f')} s; {f.storm_connected}/{f.agents} back, "
            f"{f.storm_gave_up} gave up, other attempt errors: {f.storm_errors or 'none'}",
            f"{_fmt(f.storm_s / 30, '.2f')} of budget",
            verdict(storm_ok),
        ),
        (
            "Handshake rate in the storm (from the new process answering)",
            f"~{PEER_HANDSHAKES_PER_CORE:.0f}/s per core",
            f"{_fmt(f.storm_rate, '.0f')}/s",
            f"{_fmt(f.storm_rate / PEER_HANDSHAKES_PER_CORE, '.2f')}x one core's peer figure, "
            f"{_fmt(f.storm_rate / (PEER_HANDSHAKES_PER_CORE * cores), '.2f')}x {cores} cores; "
            f"{_fmt(f.storm_rate / f.baseline_rate, '.2f')}x same-run bare server "
            f"({_fmt(f.baseline_rate, '.0f')}/s)",
            "info",
        ),
        (
            "Fan-out of system.noop to all agents (median of "
            f"{len(f.fanout_s)}; platform-reported)",
            "<= 2 s median, all answered",
            f"{_fmt(fan_median, '.2f')} s (runs: "
            + ", ".join(f"{s:.2f}" for s in f.fanout_s)
            + f"); answered {min(f.fanout_answered, default=0)}-"
            f"{max(f.fanout_answered, default=0)}/{f.agents}",
            f"{_fmt(fan_median / 2, '.2f')} of budget",
            verdict(fan_median <= 2 and all_answered),
        ),
        round_trip,
        (
            f"Idle platform CPU, {f.agents} agents, 60 s heartbeat",
            "<= 5% of a core",
            f"{_fmt(f.idle_cpu * 100, '.2f')}% over {f.idle_seconds:.0f} s",
            f"{_fmt(f.idle_cpu / 0.05, '.2f')} of budget",
            verdict(f.idle_cpu <= 0.05),
        ),
    ]
    # Runs from before the round-trip phase existed have no figures for it.
    return [r for r in measured_rows if r is not round_trip or f.rtt_fleet_ms]


def report(args: argparse.Namespace, f: Figures, command: str) -> str:
    info = machine()
    fan_median = statistics.median(f.fanout_s) if f.fanout_s else math.nan
    wall_median = statistics.median(f.fanout_wall_s) if f.fanout_wall_s else math.nan
    rtt_median = statistics.median(f.fanout_rtt_p50_ms) if f.fanout_rtt_p50_ms else math.nan
    cpu_per_agent = (
        statistics.median(f.fanout_cpu_s) / f.agents * 1e6 if f.fanout_cpu_s else math.nan
    )
    lines = [
        f"## {f.agents} agents on one platform process",
        "",
        "Written by `benchmarks/load.py` from its latest real run.",
        "",
        f"- Date: {f.date} (start of the run)",
        f"- Machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} memory, "
        f"{info['kernel']}",
        f"- Python {info['python']}, {info['openssl']}; {info['libraries']}",
        f"- Agents: {f.agents}, in {f.simulators} simulator processes on the same machine "
        f"(first connections in flight per simulator process: {f.gate or 'no limit'}; "
        "reconnections are not limited)",
        "",
        "Reproduce (the first run enrolls the fleet, later runs reuse it):",
        "",
        "```",
        command,
        "```",
        "",
        "| figure | target | measured | ratio | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(f)]
    lines += [
        "",
        "### More figures from the same run",
        "",
        f"- Bare websockets-on-uvloop mTLS server (`benchmarks/baseline_server.py`), same "
        f"simulators and certificates: {f.baseline_kib:.1f} KiB per connection "
        f"(RSS {f.baseline_rss0 / 2**20:.0f} -> {f.baseline_rssn / 2**20:.0f} MiB), all "
        f"{f.agents} connected in {_fmt(f.baseline_connect_s, '.1f')} s from a standing start "
        f"({_fmt(f.baseline_rate, '.0f')} handshakes/s); attempt errors: "
        f"{f.baseline_errors or 'none'}.",
        f"- Platform, first connection of all {f.agents} agents from a standing start: "
        f"{_fmt(f.initial_connect_s, '.1f')} s ({_fmt(f.initial_rate, '.0f')}/s); attempt "
        f"errors: {f.initial_errors or 'none'}.",
        f"- Restart: the old process took {_fmt(f.stop_s, '.1f')} s to stop (closing every "
        f"connection with 1001); the new one answered /healthz {_fmt(f.storm_ready_s, '.1f')} s "
        f"after it was started; the platform spent {_fmt(f.storm_cpu_s, '.1f')} s of CPU on the "
        "reconnections.",
        f"- RSS after the storm: {f.rss_after_storm / 2**20:.0f} MiB.",
        f"- Platform CPU per reconnection in the storm: "
        f"{_fmt(f.storm_cpu_s / f.agents * 1000, '.2f')} ms, i.e. a capacity of "
        f"{_fmt(f.agents / f.storm_cpu_s, '.0f')} reconnections per second of one core "
        f"({_fmt(f.agents / f.storm_cpu_s / PEER_HANDSHAKES_PER_CORE, '.2f')}x the ~450/s per "
        "core peer figure, which counts the TLS handshake alone).",
        "- Machine load (1-minute load average, 2 CPUs, shared with other work) at the "
        "phases: " + ", ".join(f"{k} {v:.1f}" for k, v in f.load.items()) + ".",
        f"- Fan-out: median {_fmt(fan_median, '.2f')} s inside the platform, "
        f"{_fmt(wall_median, '.2f')} s for the whole HTTP request; median per-agent round "
        f"trip p50 {_fmt(rtt_median, '.0f')} ms (includes queueing behind the other "
        f"{f.agents - 1} sends); platform CPU {_fmt(cpu_per_agent, '.0f')} us per agent "
        "(peer figure ~125 us).",
        f"- Round trip, the platform's own figure for its hop (send of `system.noop` to the "
        f"agent's answer, inside the platform): median {_fmt(percentile(f.rtt_fleet_hop_ms, 0.5), '.2f')} ms "
        f"with {f.agents} agents, {_fmt(percentile(f.rtt_alone_hop_ms, 0.5), '.2f')} ms with one; the "
        "rest of the client's figure is HTTPS, authentication, the host lookup and the audit record "
        "(peer figure 0.23 ms p50 for a single hop). Parts of that work alone, same client, "
        f"{f.agents} agents connected, right after the round trips: "
        + (
            "; ".join(
                f"{name} ({what}): {_rtt_summary(f.rtt_parts_ms.get(name, []))}"
                for name, what in ROUND_TRIP_PARTS
            )
            if f.rtt_parts_ms
            else "not measured in this run"
        )
        + ".",
        "",
        "### What was measured, and how",
        "",
        "- One platform process, `tether server run`, SQLite in its data directory, default "
        "settings: heartbeat 60 s (agents send a JSON heartbeat each interval; their WebSocket "
        "library pings every 120 s, as the real agent does), last-seen flush every 5 s.",
        "- Every simulated agent is the real agent code (`tether.agent.connection.AgentConnection`"
        ") with its own ECDSA P-256 key and certificate, enrolled through POST /api/v1/enroll "
        "with a multi-use token; its own TLS context; hello, welcome, heartbeats, "
        "`system.noop` run by `tether.agent.action.run_action`; reconnect with the agent's "
        "jittered exponential backoff. Only the hello's machine facts are computed once per "
        "simulator process.",
        "- The simulators run on the same 2 cores as the platform, so they compete with it "
        "for CPU during handshakes and fan-out: on a deployment the agents' side costs the "
        "platform machine nothing.",
        "- RSS: psutil, median of 5 samples, 0 agents after start, a login and an empty ping; "
        f"N agents {args.settle:.0f} s after the last one connected. Per agent = "
        "(RSS with N - RSS with 0) / N.",
        "- Idle CPU: user + system CPU time of the platform process over the window divided by "
        "the wall time, with no API calls during the window.",
        "- Fan-out: POST /api/v1/hosts/ping with no host list (all online agents), "
        f"{args.fanout_runs} runs, each must be answered by every agent; the figure is the "
        "platform-reported time from first send to last acknowledgement.",
        "- Reconnect storm: SIGTERM to the platform (it closes every agent connection with "
        '1001 "going away"), a new `tether server run` on the same data; time from starting '
        "the new process until /metrics `tether_agents_connected` and the simulators both count "
        'all N. "Refused" attempts (agents knocking while no process listens) are expected; '
        "any other failed attempt is listed. Handshake rate = N / (time all back - time the "
        "new process answered).",
        "- The bare server holds connections with exactly the platform's TLS and WebSocket "
        "settings and nothing else; it is the same-run ceiling the ratios compare against.",
        "- Round trip: POST /api/v1/hosts/ping with `hosts` naming one agent (timeout 5 s), the "
        "closest real trivial action: it authenticates the analyst's token, looks the host up, "
        "sends `system.noop` over the agent's WebSocket, waits for its answer, writes the audit "
        "record and answers. Sequential requests over one kept-alive HTTPS connection (httpx), "
        "timed at the client from request to parsed answer, after 5 unmeasured warm-up requests; "
        "nearest-rank percentiles. Measured twice in the same run: on the fresh platform with "
        "only that agent connected (its own simulator process), and after the idle phase with all "
        "N connected and idle (heartbeats only).",
        "",
    ]
    findings = HERE / "findings.md"
    if findings.is_file():
        # Written by hand from profiles of these runs: why a figure misses, what was changed.
        lines += [findings.read_text().rstrip(), ""]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> Figures:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work_dir / "logs", ignore_errors=True)
    (args.work_dir / "logs").mkdir()
    ports = Ports(args.port, args.port + 1, args.port + 2)
    data = init_platform(args.work_dir, ports)
    fleet_dir = args.work_dir / "fleet"
    sims = args.simulators or max(1, min(8, math.ceil(args.agents / 2500)))
    figures = Figures(agents=args.agents, simulators=sims, gate=args.gate)
    await ensure_fleet(args, data, fleet_dir, ports)
    if not args.skip_baseline:
        await run_baseline(args, figures, data, fleet_dir, ports)
    await run_platform(args, figures, data, fleet_dir, ports)
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tether load harness (see module docstring).")
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--work-dir", type=Path, default=HERE / "out")
    parser.add_argument("--port", type=int, default=18443, help="analyst port; +1 agents, +2 bare")
    parser.add_argument("--simulators", type=int, default=0, help="processes (0: 1 per 2500)")
    parser.add_argument(
        "--gate", type=int, default=50, help="first connections in flight per simulator (0: none)"
    )
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--fanout-runs", type=int, default=5)
    parser.add_argument(
        "--round-trips", type=int, default=500, help="sequential one-host round trips (0: skip)"
    )
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-storm", action="store_true", help="for profiling runs")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument(
        "--rerender", action="store_true", help="rewrite the report from the last run's figures"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    limit = raise_fd_limit()
    if limit < args.agents + 1000:
        sys.exit(f"RLIMIT_NOFILE is {limit}; {args.agents} agents need more.")
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/load.py", *sys.argv[1:]]
    )
    saved = args.work_dir / "figures.json"
    if args.rerender:
        # Rewrite the report from the last run's figures (e.g. after editing findings.md).
        stored = json.loads(saved.read_text())
        command = stored.pop("command")
        figures = Figures(**stored)
    else:
        started = time.perf_counter()
        figures = asyncio.run(run(args))
        log(f"done in {time.perf_counter() - started:.0f} s")
        saved.write_text(json.dumps({**dataclasses.asdict(figures), "command": command}))
    for name, target, measured, ratio, verdict in rows(figures):
        print(f"- {name}: {measured} (target {target}; {ratio}) {verdict}")
    sections.write_section(args.report, "load", report(args, figures, command))
    log(f"report written to {args.report}")


if __name__ == "__main__":
    main()
