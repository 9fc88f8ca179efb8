"""Two platform nodes (docs/adr/0050): same-node against cross-node round trips, a fan-out over
both, memory per agent on each node.

    .venv/bin/python benchmarks/nodes.py --agents 1000

Steps (all on 127.0.0.1, every process and database made here is removed here):
  1. A PostgreSQL database and a Redis prefix of the run's own; `tether server init` of node A,
     `tether server join` of node B from a copy of A's data directory; both `tether server run`.
  2. Half the simulated fleet enrolled through each node (so each half's agent address is its
     node's agent port), and connected; RSS of each node before and after.
  3. Round trips (POST /api/v1/hosts/ping naming one host, sequential, timed at the client) from
     node A to a host node A holds (the baseline, same run) and to one node B holds (crossing
     Redis both ways), interleaved so load drift hits both alike.
  4. Fan-outs of `system.noop` to every agent from node A (POST /api/v1/hosts/ping, all hosts):
     half of them are node B's.
  5. Figures printed and written to the `nodes` section of docs/performance.md, with the load
     average and the machine.
"""

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import fleet
import sections
from gateway_flood import SplitDatabase, free_port
from load import TETHER, Platform, Ports, Simulators, log, machine, percentile, wait_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class Forwarder:
    """The agents' "load balancer" in front of node B's agent port: each connection goes to the
    target port of the moment it is accepted, so after node B is killed they reach node A."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, up_writer}

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()


async def _connected(plat: Platform) -> int:
    """The node's connected agents; -1 when the request failed (a kept-alive connection the
    node closed just as it was reused), so a poll simply asks again."""
    try:
        return await plat.connected()
    except httpx.HTTPError:
        return -1


def _host_ids(fleet_dir: Path, count: int) -> list[str]:
    import json

    return [
        str(json.loads(fleet.state(fleet_dir, i).identity_file.read_text())["host_id"])
        for i in range(count)
    ]


async def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="tether-nodes-bench-"))
    database = SplitDatabase()
    prefix = f"tether-bench-{secrets.token_hex(4)}:"
    os.environ["TETHER_BUS_PREFIX"] = prefix
    plats: list[Platform] = []
    sims: list[Simulators] = []
    try:
        url = database.create()
        ports = [Ports(free_port(), free_port(), 0) for _ in range(2)]
        data_a = work / "a" / "platform"
        subprocess.run(
            [
                TETHER,
                *("server", "init", "--data", str(data_a), "--hostname", "127.0.0.1"),
                *("--listen", f"127.0.0.1:{ports[0].api}"),
                *("--agent-listen", f"127.0.0.1:{ports[0].agent}"),
                *("--admin-password-file", str(work / "a" / "admin-password")),
                *("--database-url", url, "--redis-url", args.redis_url, "--node-name", "node-a"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        data_b = work / "b" / "platform"
        subprocess.run(
            [
                TETHER,
                *("server", "join", "--data", str(data_b), "--from", str(data_a)),
                *("--node-name", "node-b"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for name in ("admin-password", "admin-password.mfa.json"):
            shutil.copy2(work / "a" / name, work / "b" / name)
        for data, port in ((data_a, ports[0]), (data_b, ports[1])):
            plat = Platform(data, port, data.parent / "platform.log")
            await plat.start()
            plats.append(plat)
        a, b = plats
        await a.login()
        b.http.headers["authorization"] = f"Bearer {a.token}"
        half: int = args.agents // 2
        fleets = [work / "a" / "fleet", work / "b" / "fleet"]
        started = time.perf_counter()
        for plat, fleet_dir in zip(plats, fleets, strict=True):
            token = await plat.enrollment_token(half)
            await fleet.enroll_missing(fleet_dir, half, token, plat.data / "ca.pem")
        log(f"enrolled {2 * half} agents in {time.perf_counter() - started:.0f} s")
        rss0 = [p.proc.rss() for p in plats]
        # Node B's agents reach it through the forwarder, so they can fail over to node A.
        forwarder = Forwarder(ports[1].agent)
        await forwarder.start()
        urls = [f"wss://127.0.0.1:{ports[0].agent}", f"wss://127.0.0.1:{forwarder.port}"]
        for fleet_dir, url in zip(fleets, urls, strict=True):
            sim = Simulators()
            await sim.start(
                fleet_dir=fleet_dir,
                agents=half,
                processes=1,
                url=url,
                mode="tether",
                gate=0,
                logfile=fleet_dir.parent / "sim.log",
            )
            sims.append(sim)

        async def all_connected() -> bool:
            return all([await _connected(p) == half for p in plats])

        if await wait_for(all_connected, 300, 0.5) is None:
            raise RuntimeError("Not every agent connected within 300 s.")
        await asyncio.sleep(3)  # presence flushed and read by the other node
        rssn = [p.proc.rss() for p in plats]
        here, there = _host_ids(fleets[0], 1)[0], _host_ids(fleets[1], 1)[0]
        same_ms: list[float] = []
        cross_ms: list[float] = []
        for _ in range(5):  # warm-up
            await a.ping_one(here)
            await a.ping_one(there)
        load_rtt = os.getloadavg()
        for _ in range(args.round_trips):
            same_ms.append((await a.ping_one(here))[0])
            cross_ms.append((await a.ping_one(there))[0])
        fanouts: list[float] = []
        answered: list[int] = []
        load_fan = os.getloadavg()
        for _ in range(args.fanout_runs):
            result = await a.ping(10)
            fanouts.append(float(result["seconds"]))
            answered.append(int(result["answered"]))
        # Failover: node B killed with -9, the forwarder now sends its agents to node A.
        load_failover = os.getloadavg()
        gave_up0 = sum(sim.total("gave_up") for sim in sims)
        killed = time.perf_counter()
        b.proc.proc.kill()
        forwarder.target = ports[0].agent

        async def all_on_a() -> bool:
            connected = await _connected(a)
            return connected == 2 * half

        back = await wait_for(all_on_a, 120, 0.2)
        failover_s = math.nan if back is None else time.perf_counter() - killed
        gave_up = sum(sim.total("gave_up") for sim in sims) - gave_up0
        await forwarder.close()
        return report(
            args,
            failover_s=failover_s,
            failover_gave_up=gave_up,
            same_ms=same_ms,
            cross_ms=cross_ms,
            fanouts=fanouts,
            answered=answered,
            rss0=rss0,
            rssn=rssn,
            half=half,
            loads={"round trips": load_rtt, "fan-out": load_fan, "failover": load_failover},
        )
    finally:
        for sim in sims:
            with contextlib.suppress(Exception):
                await sim.stop()
        for plat in plats:
            with contextlib.suppress(Exception):
                await plat.stop()
        with contextlib.suppress(Exception):
            database.drop()
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(args.redis_url)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()
        shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    *,
    failover_s: float,
    failover_gave_up: int,
    same_ms: list[float],
    cross_ms: list[float],
    fanouts: list[float],
    answered: list[int],
    rss0: list[int],
    rssn: list[int],
    half: int,
    loads: dict[str, tuple[float, float, float]],
) -> str:
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/nodes.py", *sys.argv[1:]]
    )
    same50, cross50 = percentile(same_ms, 0.5), percentile(cross_ms, 0.5)
    fan = statistics.median(fanouts) if fanouts else math.nan
    per_agent = [(n - z) / half / 1024 for z, n in zip(rss0, rssn, strict=True)]
    m = machine()
    lines = [
        "## Two nodes (`benchmarks/nodes.py`)",
        "",
        f"Two `--role all` nodes on one PostgreSQL database and one Redis, {2 * half} simulated "
        f"agents ({half} per node), all on this machine. Command: `{command}`; "
        f"{dt_now()}; machine: {m['cpus']} CPUs, {m['cpu']}, {m['memory']}, {m['kernel']}, "
        f"Python {m['python']}. Load average (1, 5, 15 min) at the round trips: "
        f"{fmt_load(loads['round trips'])}; at the fan-outs: {fmt_load(loads['fan-out'])}; at "
        f"the failover: {fmt_load(loads['failover'])}.",
        "",
        "| figure | measured | goal (issue 16) |",
        "|---|---|---|",
        f"| round trip from node A to a host on node A (baseline), p50 / p99 | "
        f"{same50:.2f} / {percentile(same_ms, 0.99):.2f} ms | |",
        f"| round trip from node A to a host on node B, p50 / p99 | {cross50:.2f} / "
        f"{percentile(cross_ms, 0.99):.2f} ms (p50 {cross50 - same50:+.2f} ms, "
        f"x{cross50 / same50:.2f} of the baseline) | p50 within 1 ms of same-node |",
        f"| fan-out of system.noop from node A to all {2 * half} (half on node B), median of "
        f"{len(fanouts)} | {fan:.2f} s (runs: {', '.join(f'{s:.2f}' for s in fanouts)}); "
        f"answered {min(answered, default=0)}-{max(answered, default=0)} | <= 2 s (at 10,000) |",
        f"| RSS per connected agent, node A / node B | {per_agent[0]:.1f} / "
        f"{per_agent[1]:.1f} KiB | within 10% of single-node |",
        f"| failover: node B killed with -9 until all {2 * half} agents are on node A (its "
        f"{half} through a TCP forwarder standing in for a load balancer) | {failover_s:.1f} s, "
        f"{failover_gave_up} agents gave up | <= 30 s (at 10,000), none failed |",
        "",
        f"{args.round_trips} interleaved round trips each way. Compare only within one run: the "
        "machine is shared, and at a load average far above its 2 cores the absolute times are "
        "several times a quiet machine's. Not measured here yet: 2 x 5,000 agents, the "
        "single-node memory figure of the same run, and the restart storms (the `storm` work).",
    ]
    return "\n".join(lines)


def dt_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents, both nodes")
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--fanout-runs", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    text = asyncio.run(run(args))
    print(text)
    sections.write_section(args.report, "nodes", text)
    log(f"report written to {args.report}")


if __name__ == "__main__":
    main()
