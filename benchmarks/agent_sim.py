"""Many Tether agents in one process (asyncio on uvloop), each with its own enrolled certificate.

Mode `tether` runs the real agent code, `tether.agent.connection.AgentConnection`, once per
simulated endpoint: its own TLS context with its own key and certificate, hello, welcome,
heartbeats at the interval the platform gives, jobs run by `tether.agent.action.run_action` with
the real handlers, reconnection with the agent's jittered backoff. Only the hello is computed once
per process (it reads the machine's interfaces) and given a per-agent hostname.

Mode `bare` only opens a mutual-TLS WebSocket with the same certificates and holds it, for the
baseline server (`baseline_server.py`).

The process prints one JSON line of counters per interval on stdout and stops on SIGTERM/SIGINT
or when its standard input closes (the harness died).

    python benchmarks/agent_sim.py --fleet DIR --first 0 --count 2500 --url wss://127.0.0.1:8444
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import signal
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

import fleet
from tether.agent import sysinfo
from tether.agent.connection import AgentConnection, client_ssl_context
from tether.agent.errors import AgentRefused
from tether.agent.journal import Journal
from tether.agent.retry import AddressRotation, Backoff
from tether.protocol import MAX_FRAME_BYTES, Hello, JobRequest, ProtocolError, Welcome


@dataclasses.dataclass
class Stats:
    agents: int = 0
    connected: int = 0
    welcomed: int = 0
    attempts: int = 0
    jobs: int = 0
    gave_up: int = 0
    # Why connection attempts failed before a welcome, and why sessions ended after one.
    connect_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    session_ends: Counter[str] = dataclasses.field(default_factory=Counter)

    def line(self) -> str:
        data: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self)
        }  # not asdict(): it rebuilds a Counter from its items
        data["connect_errors"] = dict(self.connect_errors)
        data["session_ends"] = dict(self.session_ends)
        data["t"] = time.time()
        return json.dumps(data)


def classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ssl.SSLError):
        return f"tls:{exc.reason}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else None
        return f"closed:{code}"
    if isinstance(exc, InvalidHandshake):
        return f"handshake:{type(exc).__name__}"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, OSError):
        return f"os:{type(exc).__name__}:{exc.errno}"
    return type(exc).__name__


class Gate:
    """At most `limit` first connections of this process between TCP connect and welcome.

    Started all at once, thousands of simulated endpoints would queue far more handshakes than
    a server completes within the agent's 15 s open timeout, and every timed-out attempt is
    retried: the measurement would be of that collapse. Real endpoints start over time; the gate
    stands for that. It applies to the first connection only: reconnections after a restart are
    paced by the agent's own jittered backoff, as in the field. 0 means no gate.
    """

    def __init__(self, limit: int) -> None:
        self._sem = asyncio.Semaphore(limit) if limit > 0 else None

    async def acquire(self) -> bool:
        if self._sem is None:
            return False
        await self._sem.acquire()
        return True

    def release(self) -> None:
        if self._sem is not None:
            self._sem.release()


SHARED_JOURNAL = Journal(Path(":memory:"))


class SimAgent(AgentConnection):
    """The real agent connection, counted."""

    def __init__(
        self, index: int, fleet_dir: Path, url: str, hello: Hello, stats: Stats, gate: Gate
    ):
        super().__init__(
            fleet.state(fleet_dir, index),
            hello=lambda: hello,
            backoff=Backoff(),
            # The load runs send calls only, which are never journaled: one shared in-memory
            # journal instead of ten thousand SQLite files.
            journal=SHARED_JOURNAL,
        )
        self._identity = dataclasses.replace(self._identity, agent_url=url)
        self._rotation = AddressRotation([url])
        self._stats = stats
        self._gate = gate
        self._holding = False
        self._welcomed = False
        counted = self.jobs.on_job

        async def on_job(job: JobRequest) -> None:
            await counted(job)
            stats.jobs += 1

        self.jobs.on_job = on_job  # type: ignore[method-assign]

    def _adopt_addresses(self, addresses: tuple[str, ...]) -> None:
        """The harness names the address; ten thousand agents writing the list is not the
        load being measured."""

    def _let_go(self) -> None:
        if self._holding:
            self._holding = False
            self._gate.release()

    async def _session(self) -> None:
        self._stats.attempts += 1
        self._holding = await self._gate.acquire()
        try:
            await super()._session()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._welcomed:
                self._stats.session_ends[classify(exc)] += 1
            else:
                self._stats.connect_errors[classify(exc)] += 1
            raise
        finally:
            self._let_go()
            if self._welcomed:
                self._welcomed = False
                self._stats.connected -= 1

    async def _welcome(self, websocket: ClientConnection) -> Welcome:
        welcome = await super()._welcome(websocket)
        self._let_go()
        self._gate = Gate(0)  # first connection only
        self._welcomed = True
        self._stats.connected += 1
        self._stats.welcomed += 1
        return welcome


async def run_tether(agent: SimAgent, stats: Stats, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        await agent.run_forever()
    except AgentRefused:
        stats.gave_up += 1


async def run_bare(
    index: int, fleet_dir: Path, url: str, stats: Stats, gate: Gate, delay: float
) -> None:
    """Open and hold one mutual-TLS WebSocket; reconnect with the agent's backoff."""
    context = client_ssl_context(fleet.state(fleet_dir, index))
    backoff = Backoff()
    attempt = 0
    await asyncio.sleep(delay)
    while True:
        stats.attempts += 1
        holding = await gate.acquire()
        try:
            websocket = await connect(
                url,
                ssl=context,
                compression=None,
                max_size=MAX_FRAME_BYTES,
                ping_interval=120,
                ping_timeout=30,
                open_timeout=15,
                close_timeout=2,
                proxy=None,
                user_agent_header=None,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            stats.connect_errors[classify(exc)] += 1
            if holding:
                gate.release()
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1
            continue
        if holding:
            gate.release()
        gate = Gate(0)  # first connection only
        stats.connected += 1
        stats.welcomed += 1
        attempt = 0
        try:
            await websocket.wait_closed()
            stats.session_ends["closed"] += 1
        finally:
            stats.connected -= 1
            with contextlib.suppress(Exception):
                await websocket.close()
        await asyncio.sleep(backoff.delay(0))


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def main(args: argparse.Namespace) -> None:
    # Thousands of "connection lost, reconnecting" warnings are the expected storm; count, not log.
    logging.getLogger("tether.agent").setLevel(logging.ERROR)
    stats = Stats(agents=args.count)
    gate = Gate(args.gate)
    hello = sysinfo.hello()
    tasks: list[asyncio.Task[None]] = []
    for index in range(args.first, args.first + args.count):
        delay = random.uniform(0, args.ramp) if args.ramp > 0 else 0.0
        if args.mode == "tether":
            agent = SimAgent(
                index,
                args.fleet,
                args.url,
                hello.model_copy(update={"hostname": fleet.hostname(index)}),
                stats,
                gate,
            )
            tasks.append(asyncio.create_task(run_tether(agent, stats, delay)))
        else:
            tasks.append(
                asyncio.create_task(run_bare(index, args.fleet, args.url, stats, gate, delay))
            )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_stdin_closed() if args.watch_stdin else stop.wait())
    watchdog.add_done_callback(lambda _: stop.set())

    async def report() -> None:
        while True:
            print(stats.line(), flush=True)
            await asyncio.sleep(args.interval)

    reporter = asyncio.create_task(report())
    await stop.wait()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks, return_exceptions=True)
    reporter.cancel()
    watchdog.cancel()
    print(stats.line(), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fleet", type=Path, required=True, help="fleet directory (fleet.py)")
    parser.add_argument("--first", type=int, default=0, help="first agent index")
    parser.add_argument("--count", type=int, required=True, help="how many agents")
    parser.add_argument("--url", required=True, help="wss://127.0.0.1:PORT")
    parser.add_argument("--mode", choices=["tether", "bare"], default="tether")
    parser.add_argument(
        "--gate", type=int, default=0, help="first connections in flight (0: no gate)"
    )
    parser.add_argument("--ramp", type=float, default=0.0, help="spread first connects (s)")
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between reports")
    return parser.parse_args(argv)


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
