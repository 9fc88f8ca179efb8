"""Many analysts at once: audited actions per second and their latency (issue 17, items 1 and 2).

    .venv/bin/python benchmarks/analysts.py --agents 50 --clients 50 --seconds 30

Steps (all on 127.0.0.1, every process started here is stopped here):
  1. `tether server init` in the work directory (once), `--clients` admin accounts with a known
     second factor seeded into it (once), the fleet enrolled (once; cached on disk), one
     `tether server run` and the simulated agents (benchmarks/agent_sim.py, the real agent code).
  2. Round trip: one client, one kept-alive HTTPS connection, alternating GET /healthz (HTTPS
     alone) and POST /api/v1/hosts/ping naming one host (authentication, the host lookup, the
     agent's round trip, the audit record), so both see the same machine load.
  3. Concurrency: `--clients` clients, each its own admin session and connection, for
     `--seconds`: most ping one host each (an audited action), the rest list the hosts. Then
     every answered ping must have its record in the chain, and the chain must verify.
  4. The figures are printed and written to their section of docs/performance.md.
"""

import argparse
import asyncio
import json
import math
import os
import shlex
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import fleet
import load
import sections

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The seeded admins' password (a benchmark's throwaway platform, never a real one).
PASSWORD = "bench-analyst-password-0123"
SECRET_FILE = "analysts.json"


async def seed_admins(data: Path, count: int) -> dict[str, str]:
    """`count` admin accounts with a known TOTP secret, created offline once; name -> base32."""
    path = data.parent / SECRET_FILE
    known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    if len(known) >= count:
        return known

    async def create() -> None:
        from tether.protocol import Role
        from tether.server.auth.totp import new_secret, to_base32
        from tether.server.config import load_settings
        from tether.server.services.audit import AuditLog
        from tether.server.services.checkpoints import CheckpointSigner
        from tether.server.services.mfa import load_sealer
        from tether.server.services.platform import session_policy
        from tether.server.services.users import Users
        from tether.server.store.db import create_engine

        settings = load_settings(data)
        engine = create_engine(settings.db_url)
        try:
            audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
            users = Users(
                engine, audit, session_policy(settings), sealer=load_sealer(settings.mfa_key)
            )
            for n in range(len(known), count):
                name = f"bench-admin-{n:03d}"
                user = await users.create(name, PASSWORD, {Role.ADMIN}, actor="benchmark")
                secret = new_secret()
                await users.mfa.enroll_directly(user.id, secret)
                known[name] = to_base32(secret)
        finally:
            await engine.dispose()

    await create()
    path.write_text(json.dumps(known))
    return known


class Client:
    """One analyst: an admin session on its own kept-alive HTTPS connection."""

    def __init__(self, data: Path, port: int) -> None:
        context = ssl.create_default_context(cafile=str(data / "ca.pem"))
        self.http = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=context, timeout=60.0
        )

    async def login(self, name: str, secret: str) -> None:
        from tether.server.auth.totp import from_base32, time_step, totp

        first = await self.http.post(
            "/api/v1/auth/login", json={"username": name, "password": PASSWORD, "client": "api"}
        )
        first.raise_for_status()
        answer = first.json()
        step = time_step(time.time())
        second = await self.http.post(
            "/api/v1/auth/login/mfa",
            json={"token": answer["token"], "code": totp(from_base32(secret), step * 30)},
        )
        second.raise_for_status()
        self.http.headers["authorization"] = f"Bearer {second.json()['token']}"

    async def close(self) -> None:
        await self.http.aclose()


@dataclass
class Figures:
    agents: int
    clients: int
    pingers: int
    seconds: float
    round_trips: int
    database: str
    healthz_ms: list[float] = field(default_factory=list)
    ping_ms: list[float] = field(default_factory=list)
    # The concurrency phase.
    burst_seconds: float = 0.0
    burst_ping_ms: list[float] = field(default_factory=list)
    burst_list_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    records_expected: int = 0
    records_found: int = 0
    chain_intact: bool = False
    chain_problem: str = ""
    platform_cpu_s: float = math.nan
    load: dict[str, float] = field(default_factory=dict)
    date: str = ""


async def count_ping_records(data: Path, after_seq: int) -> tuple[int, int]:
    """(hosts.ping records by the seeded admins after `after_seq`, head seq) in the database."""
    from sqlalchemy import func, select

    from tether.server.config import load_settings
    from tether.server.store.db import create_engine
    from tether.server.store.tables import audit_head, audit_records

    engine = create_engine(load_settings(data).db_url)
    try:
        async with engine.connect() as conn:
            found = (
                await conn.execute(
                    select(func.count()).where(
                        audit_records.c.seq > after_seq,
                        audit_records.c.action == "hosts.ping",
                        audit_records.c.actor.startswith("bench-admin-"),
                    )
                )
            ).scalar_one()
            head = (await conn.execute(select(audit_head.c.seq))).scalar_one()
    finally:
        await engine.dispose()
    return int(found), int(head)


async def round_trip_phase(client: Client, host_id: str, figures: Figures) -> None:
    async def healthz() -> None:
        (await client.http.get("/healthz")).raise_for_status()

    async def ping() -> None:
        answer = await client.http.post(
            "/api/v1/hosts/ping", json={"hosts": [host_id], "timeout_seconds": 5}
        )
        answer.raise_for_status()
        if answer.json()["answered"] != 1:
            raise RuntimeError(f"The round trip to {host_id} failed: {answer.text}")

    for _ in range(10):  # warm-up: first use of each route and of the connection
        await healthz()
        await ping()
    figures.load["round trip"] = os.getloadavg()[0]
    for _ in range(figures.round_trips):
        for call, samples in ((healthz, figures.healthz_ms), (ping, figures.ping_ms)):
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)


async def concurrency_phase(
    clients: list[Client], host_ids: list[str], figures: Figures, stop_at: float
) -> int:
    """Every client loops until `stop_at`; returns the number of pings answered 200."""
    answered = 0

    def failed(kind: str) -> None:
        figures.errors[kind] = figures.errors.get(kind, 0) + 1

    async def pinger(client: Client, host_id: str) -> None:
        nonlocal answered
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                reply = await client.http.post(
                    "/api/v1/hosts/ping", json={"hosts": [host_id], "timeout_seconds": 5}
                )
            except httpx.HTTPError as exc:
                failed(f"ping {type(exc).__name__}")
                continue
            figures.burst_ping_ms.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                failed(f"ping {reply.status_code}")
                continue
            answered += 1
            if reply.json()["answered"] != 1:
                failed("ping: agent did not answer")

    async def lister(client: Client) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                reply = await client.http.get("/api/v1/hosts")
            except httpx.HTTPError as exc:
                failed(f"list {type(exc).__name__}")
                continue
            figures.burst_list_ms.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                failed(f"list {reply.status_code}")

    tasks = [
        pinger(c, host_ids[n % len(host_ids)]) if n < figures.pingers else lister(c)
        for n, c in enumerate(clients)
    ]
    await asyncio.gather(*tasks)
    return answered


async def start_profile(
    args: argparse.Namespace, plat: load.Platform, phase: str, seconds: int
) -> load.Child | None:
    """py-spy sampling the platform for `seconds` (with --profile), into PROFILE.phase.txt."""
    if args.profile is None:
        return None
    return await load.spawn(
        "py-spy",
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(plat.proc.pid),
            "--format",
            "raw",
            "--output",
            f"{args.profile}.{phase}.txt",
            "--duration",
            str(seconds),
        ],
        args.work_dir / "logs" / "py-spy.log",
    )


async def run(args: argparse.Namespace) -> Figures:
    import datetime as dt

    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    ports = load.Ports(args.port, args.port + 1, args.port + 2)
    init_args = ["--database-url", args.database_url] if args.database_url else []
    data = load.init_platform(work, ports, init_args)
    admins = await seed_admins(data, args.clients)
    fleet_dir = work / "fleet"
    await load.ensure_fleet(args, data, fleet_dir, ports)
    figures = Figures(
        agents=args.agents,
        clients=args.clients,
        pingers=args.clients - args.listers,
        seconds=args.seconds,
        round_trips=args.round_trips,
        database="PostgreSQL" if args.database_url else "SQLite",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    plat = load.Platform(data, ports, logs / "platform.log")
    sims = load.Simulators()
    clients: list[Client] = []
    try:
        await plat.start()
        load.log(f"platform: up (pid {plat.proc.pid})")
        await sims.start(
            fleet_dir=fleet_dir,
            agents=args.agents,
            processes=1,
            url=f"wss://127.0.0.1:{ports.agent}",
            mode="tether",
            gate=50,
            logfile=logs / "sim.log",
        )

        async def all_in() -> bool:
            return await plat.connected() >= int(args.agents)

        if await load.wait_for(all_in, 120, 0.2) is None:
            raise RuntimeError("Not every agent connected; see the logs.")
        host_ids = [load._host_id(fleet_dir, n) for n in range(args.agents)]
        for name, secret in list(admins.items())[: args.clients]:
            client = Client(data, ports.api)
            await client.login(name, secret)
            clients.append(client)
        load.log(f"{len(clients)} analysts logged in, {args.agents} agents connected")

        profiler = await start_profile(args, plat, "round-trip", 8)
        await round_trip_phase(clients[0], host_ids[0], figures)
        if profiler is not None:
            await profiler.proc.wait()
        load.log(
            f"round trip: healthz p50 {load.percentile(figures.healthz_ms, 0.5):.2f} ms, "
            f"ping p50 {load.percentile(figures.ping_ms, 0.5):.2f} ms"
        )

        _, head_before = await count_ping_records(data, 0)
        figures.load["concurrency"] = os.getloadavg()[0]
        profiler = await start_profile(args, plat, "concurrency", int(args.seconds) - 2)
        cpu0 = plat.proc.cpu()
        started = time.perf_counter()
        answered = await concurrency_phase(clients, host_ids, figures, started + args.seconds)
        figures.burst_seconds = time.perf_counter() - started
        figures.platform_cpu_s = plat.proc.cpu() - cpu0
        figures.load["after"] = os.getloadavg()[0]
        figures.records_expected = answered
        figures.records_found, _ = await count_ping_records(data, head_before)
        if profiler is not None:
            await profiler.proc.wait()
        load.log(
            f"concurrency: {answered} pings ({answered / figures.burst_seconds:.0f}/s), "
            f"{len(figures.burst_list_ms)} lists, errors {figures.errors}; records "
            f"{figures.records_found}/{answered}"
        )
        # Reading the log takes the Active Response role: the first admin has it.
        await plat.login()
        verdict = await plat.http.get("/api/v1/audit/verify")
        verdict.raise_for_status()
        report = verdict.json()
        figures.chain_intact = bool(report["intact"])
        figures.chain_problem = str(report.get("problem", ""))
        load.log(f"chain intact: {figures.chain_intact} {figures.chain_problem}")
    finally:
        for client in clients:
            await client.close()
        await sims.stop()
        if plat.child is not None:
            await plat.stop()
        await plat.http.aclose()
    return figures


def _ms(values: list[float], fraction: float) -> str:
    value = load.percentile(values, fraction)
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def report(f: Figures, command: str) -> str:
    m = load.machine()
    healthz50, healthz99 = load.percentile(f.healthz_ms, 0.5), load.percentile(f.healthz_ms, 0.99)
    ping50, ping99 = load.percentile(f.ping_ms, 0.5), load.percentile(f.ping_ms, 0.99)
    rate = f.records_expected / f.burst_seconds if f.burst_seconds else math.nan
    list_rate = len(f.burst_list_ms) / f.burst_seconds if f.burst_seconds else math.nan
    burst99 = load.percentile(f.burst_ping_ms, 0.99)

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**MISS**"

    loads = ", ".join(f"{k} {v:.1f}" for k, v in f.load.items())
    lost = f.records_expected - f.records_found
    lines = [
        "## Many analysts at once (`benchmarks/analysts.py`)",
        "",
        f"Run {f.date}: `{command}`. Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory']}, "
        f"{m['kernel']}, Python {m['python']}, {m['openssl']}; {m['libraries']}. "
        f"One platform process on {f.database}, {f.agents} simulated agents (the real agent "
        f"code, one simulator process on the same machine). Machine load (1-minute load "
        f"average, shared with other work): {loads}.",
        "",
        "| figure | goal (issue 17) | measured | verdict |",
        "|---|---|---|---|",
        f"| round trip of an audited action (POST /api/v1/hosts/ping naming one host), "
        f"{f.round_trips} sequential, against GET /healthz alternating with it "
        f"| p50 <= 3x, p99 <= 5x /healthz | ping p50 {ping50:.2f} ms, p99 {ping99:.2f} ms; "
        f"/healthz p50 {healthz50:.2f} ms, p99 {healthz99:.2f} ms: "
        f"{ping50 / healthz50:.2f}x and {ping99 / healthz99:.2f}x "
        f"| {verdict(ping50 <= 3 * healthz50 and ping99 <= 5 * healthz99)} |",
        f"| audited actions per second, {f.clients} clients for {f.seconds:.0f} s "
        f"({f.pingers} pinging one host each, {f.clients - f.pingers} listing hosts) "
        f"| >= 300/s | {rate:.0f}/s ({f.records_expected} in {f.burst_seconds:.1f} s) "
        f"| {verdict(rate >= 300)} |",
        f"| latency of those pings | p99 <= 100 ms | p50 {_ms(f.burst_ping_ms, 0.5)}, "
        f"p90 {_ms(f.burst_ping_ms, 0.9)}, p99 {_ms(f.burst_ping_ms, 0.99)} ms "
        f"| {verdict(burst99 <= 100)} |",
        f"| hosts list (GET /api/v1/hosts) in the same phase | >= 500/s | {list_rate:.0f}/s "
        f"(p50 {_ms(f.burst_list_ms, 0.5)}, p99 {_ms(f.burst_list_ms, 0.99)} ms) "
        f"| {verdict(list_rate >= 500)} |",
        f"| nothing lost, chain intact | every answered ping on record; verify intact "
        f"| {f.records_found} records for {f.records_expected} answered pings; errors "
        f"{f.errors or 'none'}; chain {'intact' if f.chain_intact else f.chain_problem} "
        f"| {verdict(lost == 0 and f.chain_intact and not f.errors)} |",
        "",
        f"Platform CPU in the concurrency phase: {f.platform_cpu_s:.1f} s over "
        f"{f.burst_seconds:.1f} s ({f.platform_cpu_s / max(f.records_expected, 1) * 1e6:.0f} us "
        "per audited ping, the lists' share included). The simulators and the clients run on "
        "the same 2 cores as the platform.",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--listers", type=int, default=10, help="clients listing hosts")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--database-url", default="", help="PostgreSQL (default: SQLite)")
    parser.add_argument("--work-dir", type=Path, default=HERE / "out-analysts")
    parser.add_argument("--port", type=int, default=18643, help="analyst port; +1 agents")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument("--no-report", action="store_true", help="print only")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # load.ensure_fleet reads these.
    args.storm_timeout = 0
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/analysts.py", *sys.argv[1:]]
    )
    figures = asyncio.run(run(args))
    text = report(figures, command)
    print(text)
    (args.work_dir / "figures.json").write_text(json.dumps(figures.__dict__, default=str))
    if not args.no_report:
        sections.write_section(args.report, "analysts", text)


if __name__ == "__main__":
    _ = fleet  # the fleet module is load.py's; imported here so a missing file fails early
    main()
