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
  4. Steps 2 and 3 again on the same data, sessions and agents with both changes of
     docs/adr/0053 switched off (TETHER_SESSION_CACHE_SECONDS=0, TETHER_AUDIT_GROUP_RECORDS=1):
     the same-run baseline, since the machine is shared and its load moves.
  5. The figures are printed and written to their section of docs/performance.md.
"""

import argparse
import asyncio
import dataclasses
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

    def __init__(self, data: Path, port: int, token: str = "") -> None:
        context = ssl.create_default_context(cafile=str(data / "ca.pem"))
        self.http = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=context, timeout=60.0
        )
        self.token = token
        if token:
            self.http.headers["authorization"] = f"Bearer {token}"

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
        self.token = second.json()["token"]
        self.http.headers["authorization"] = f"Bearer {self.token}"

    async def close(self) -> None:
        await self.http.aclose()


# The same platform as shipped, and with both changes of docs/adr/0053 switched off: every record
# in a transaction of its own and every request reading its session from the database.
CONFIGURATIONS = {
    "as shipped": {},
    "baseline": {"TETHER_SESSION_CACHE_SECONDS": "0", "TETHER_AUDIT_GROUP_RECORDS": "1"},
}


@dataclass
class Phase:
    """The figures of one configuration."""

    healthz_ms: list[float] = field(default_factory=list)
    ping_ms: list[float] = field(default_factory=list)
    burst_seconds: float = 0.0
    burst_ping_ms: list[float] = field(default_factory=list)
    burst_list_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    records_expected: int = 0
    records_found: int = 0
    chain_intact: bool = False
    chain_problem: str = ""
    platform_cpu_s: float = math.nan
    # Platform CPU over the whole round trip phase (warm-up, /healthz and pings).
    round_trip_cpu_s: float = math.nan
    load: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records_expected / self.burst_seconds if self.burst_seconds else math.nan

    @property
    def list_rate(self) -> float:
        return len(self.burst_list_ms) / self.burst_seconds if self.burst_seconds else math.nan


@dataclass
class Figures:
    agents: int
    clients: int
    pingers: int
    seconds: float
    round_trips: int
    database: str
    phases: dict[str, Phase] = field(default_factory=dict)
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


async def round_trip_phase(client: Client, host_id: str, count: int, phase: Phase) -> None:
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
    phase.load["round trip"] = os.getloadavg()[0]
    for _ in range(count):
        for call, samples in ((healthz, phase.healthz_ms), (ping, phase.ping_ms)):
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)


async def concurrency_phase(
    clients: list[Client], host_ids: list[str], pingers: int, phase: Phase, stop_at: float
) -> int:
    """Every client loops until `stop_at`; returns the number of pings answered 200."""
    answered = 0

    def failed(kind: str) -> None:
        phase.errors[kind] = phase.errors.get(kind, 0) + 1

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
            phase.burst_ping_ms.append((time.perf_counter() - started) * 1000)
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
            phase.burst_list_ms.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                failed(f"list {reply.status_code}")

    tasks = [
        pinger(c, host_ids[n % len(host_ids)]) if n < pingers else lister(c)
        for n, c in enumerate(clients)
    ]
    await asyncio.gather(*tasks)
    return answered


async def start_profile(
    args: argparse.Namespace, plat: load.Platform, name: str, seconds: int
) -> load.Child | None:
    """py-spy sampling the platform for `seconds` (with --profile), into PROFILE.name.txt."""
    if args.profile is None:
        return None
    return await load.spawn(
        "py-spy",
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            # Without it py-spy stops the platform for every sample: a slower platform.
            "--nonblocking",
            "--pid",
            str(plat.proc.pid),
            "--format",
            "raw",
            "--output",
            f"{args.profile}.{name}.txt",
            "--duration",
            str(seconds),
        ],
        args.work_dir / "logs" / "py-spy.log",
    )


async def run_configuration(
    args: argparse.Namespace,
    label: str,
    data: Path,
    ports: load.Ports,
    admins: dict[str, str],
    tokens: dict[str, str],
    figures: Figures,
) -> Phase:
    """One platform run in configuration `label`: both phases, then the chain's check."""
    phase = Phase()
    logs = args.work_dir / "logs"
    fleet_dir = args.work_dir / "fleet"
    for name in {k for c in CONFIGURATIONS.values() for k in c}:
        os.environ.pop(name, None)
    os.environ.update(CONFIGURATIONS[label])
    plat = load.Platform(data, ports, logs / f"platform-{label.replace(' ', '-')}.log")
    sims = load.Simulators()
    clients: list[Client] = []
    slug = label.replace(" ", "-")
    try:
        await plat.start()
        load.log(f"{label}: platform up (pid {plat.proc.pid})")
        await sims.start(
            fleet_dir=fleet_dir,
            agents=args.agents,
            processes=1,
            url=f"wss://127.0.0.1:{ports.agent}",
            mode="tether",
            gate=50,
            logfile=logs / f"sim-{slug}.log",
        )

        async def all_in() -> bool:
            return await plat.connected() >= int(args.agents)

        if await load.wait_for(all_in, 120, 0.2) is None:
            raise RuntimeError("Not every agent connected; see the logs.")
        host_ids = [load._host_id(fleet_dir, n) for n in range(args.agents)]
        for name, secret in list(admins.items())[: args.clients]:
            client = Client(data, ports.api, tokens.get(name, ""))
            if not client.token:
                await client.login(name, secret)
                tokens[name] = client.token
            clients.append(client)
        load.log(f"{label}: {len(clients)} analysts, {args.agents} agents connected")

        profiler = await start_profile(args, plat, f"{slug}.round-trip", 8)
        cpu0 = plat.proc.cpu()
        await round_trip_phase(clients[0], host_ids[0], args.round_trips, phase)
        phase.round_trip_cpu_s = plat.proc.cpu() - cpu0
        if profiler is not None:
            await profiler.proc.wait()
        load.log(
            f"{label}: round trip: healthz p50 {load.percentile(phase.healthz_ms, 0.5):.2f} ms, "
            f"ping p50 {load.percentile(phase.ping_ms, 0.5):.2f} ms, platform CPU "
            f"{phase.round_trip_cpu_s:.2f} s"
        )

        _, head_before = await count_ping_records(data, 0)
        phase.load["concurrency"] = os.getloadavg()[0]
        profiler = await start_profile(args, plat, f"{slug}.concurrency", int(args.seconds) - 2)
        cpu0 = plat.proc.cpu()
        started = time.perf_counter()
        answered = await concurrency_phase(
            clients, host_ids, figures.pingers, phase, started + args.seconds
        )
        phase.burst_seconds = time.perf_counter() - started
        phase.platform_cpu_s = plat.proc.cpu() - cpu0
        phase.load["after"] = os.getloadavg()[0]
        phase.records_expected = answered
        phase.records_found, _ = await count_ping_records(data, head_before)
        if profiler is not None:
            await profiler.proc.wait()
        load.log(
            f"{label}: {answered} pings ({phase.rate:.0f}/s), {len(phase.burst_list_ms)} lists "
            f"({phase.list_rate:.0f}/s), errors {phase.errors}; records "
            f"{phase.records_found}/{answered}"
        )
        # Reading the log takes the Active Response role: the first admin has it.
        await plat.login()
        verdict = await plat.http.get("/api/v1/audit/verify")
        verdict.raise_for_status()
        report = verdict.json()
        phase.chain_intact = bool(report["intact"])
        phase.chain_problem = str(report.get("problem", ""))
        load.log(f"{label}: chain intact: {phase.chain_intact} {phase.chain_problem}")
    finally:
        for client in clients:
            await client.close()
        await sims.stop()
        if plat.child is not None:
            await plat.stop()
        await plat.http.aclose()
    return phase


async def run(args: argparse.Namespace) -> Figures:
    import datetime as dt

    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    ports = load.Ports(args.port, args.port + 1, args.port + 2)
    init_args = ["--database-url", args.database_url] if args.database_url else []
    data = load.init_platform(work, ports, init_args)
    admins = await seed_admins(data, args.clients)
    await load.ensure_fleet(args, data, work / "fleet", ports)
    figures = Figures(
        agents=args.agents,
        clients=args.clients,
        pingers=args.clients - args.listers,
        seconds=args.seconds,
        round_trips=args.round_trips,
        database="PostgreSQL" if args.database_url else "SQLite",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    tokens: dict[str, str] = {}
    labels = list(CONFIGURATIONS) if not args.only_shipped else ["as shipped"]
    for label in labels:
        figures.phases[label] = await run_configuration(
            args, label, data, ports, admins, tokens, figures
        )
    return figures


def _ms(values: list[float], fraction: float) -> str:
    value = load.percentile(values, fraction)
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or not b else f"{a / b:.2f}x"


def report(f: Figures, command: str) -> str:
    m = load.machine()
    shipped = f.phases["as shipped"]
    base = f.phases.get("baseline")
    healthz50 = load.percentile(shipped.healthz_ms, 0.5)
    healthz99 = load.percentile(shipped.healthz_ms, 0.99)
    ping50 = load.percentile(shipped.ping_ms, 0.5)
    ping99 = load.percentile(shipped.ping_ms, 0.99)
    burst99 = load.percentile(shipped.burst_ping_ms, 0.99)

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**MISS**"

    def then(text: str) -> str:
        return f" | {text}" if base is not None else ""

    lost = shipped.records_expected - shipped.records_found
    header = "| figure | goal (issue 17) | as shipped | verdict |"
    rule = "|---|---|---|---|"
    if base is not None:
        header += " baseline: no session cache, one record per transaction (same run) |"
        rule += "---|"
    lines = [
        "## Many analysts at once (`benchmarks/analysts.py`)",
        "",
        f"Run {f.date}: `{command}`. Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory']}, "
        f"{m['kernel']}, Python {m['python']}, {m['openssl']}; {m['libraries']}. "
        f"One platform process on {f.database}, {f.agents} simulated agents (the real agent "
        "code, one simulator process), the clients in one process: all on the same 2 cores. "
        "Machine load (1-minute load average, shared with other work): "
        + "; ".join(
            f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.load.items())
            for label, p in f.phases.items()
        )
        + ".",
        "",
        header,
        rule,
        f"| round trip of an audited action (POST /api/v1/hosts/ping naming one host), "
        f"{f.round_trips} sequential, alternating with GET /healthz "
        f"| p50 <= 3x, p99 <= 5x /healthz | ping p50 {ping50:.2f} ms, p99 {ping99:.2f} ms; "
        f"/healthz p50 {healthz50:.2f}, p99 {healthz99:.2f} ms: "
        f"{_ratio(ping50, healthz50)} and {_ratio(ping99, healthz99)} "
        f"| {verdict(ping50 <= 3 * healthz50 and ping99 <= 5 * healthz99)}"
        + then(
            f"ping p50 {_ms(base.ping_ms, 0.5)}, p99 {_ms(base.ping_ms, 0.99)} ms; /healthz "
            f"p50 {_ms(base.healthz_ms, 0.5)}, p99 {_ms(base.healthz_ms, 0.99)} ms"
            if base
            else ""
        )
        + " |",
        f"| audited actions per second, {f.clients} clients for {f.seconds:.0f} s "
        f"({f.pingers} pinging one host each, {f.clients - f.pingers} listing hosts) "
        f"| >= 300/s | {shipped.rate:.0f}/s ({shipped.records_expected} in "
        f"{shipped.burst_seconds:.1f} s) | {verdict(shipped.rate >= 300)}"
        + then(f"{base.rate:.0f}/s ({base.records_expected})" if base else "")
        + " |",
        f"| latency of those pings | p99 <= 100 ms | p50 {_ms(shipped.burst_ping_ms, 0.5)}, "
        f"p90 {_ms(shipped.burst_ping_ms, 0.9)}, p99 {_ms(shipped.burst_ping_ms, 0.99)} ms "
        f"| {verdict(burst99 <= 100)}"
        + then(
            f"p50 {_ms(base.burst_ping_ms, 0.5)}, p99 {_ms(base.burst_ping_ms, 0.99)} ms"
            if base
            else ""
        )
        + " |",
        f"| hosts list (GET /api/v1/hosts) in the same phase | >= 500/s | "
        f"{shipped.list_rate:.0f}/s (p50 {_ms(shipped.burst_list_ms, 0.5)}, "
        f"p99 {_ms(shipped.burst_list_ms, 0.99)} ms) | {verdict(shipped.list_rate >= 500)}"
        + then(f"{base.list_rate:.0f}/s" if base else "")
        + " |",
        f"| nothing lost, chain intact | every answered ping on record; verify intact "
        f"| {shipped.records_found} records for {shipped.records_expected} answered pings; "
        f"errors {shipped.errors or 'none'}; chain "
        f"{'intact' if shipped.chain_intact else shipped.chain_problem} "
        f"| {verdict(lost == 0 and shipped.chain_intact and not shipped.errors)}"
        + then(
            f"{base.records_found}/{base.records_expected}; chain "
            f"{'intact' if base.chain_intact else base.chain_problem}"
            if base
            else ""
        )
        + " |",
        "",
        "Platform CPU in the concurrency phase: "
        + "; ".join(
            f"{label} {p.platform_cpu_s:.1f} s over {p.burst_seconds:.1f} s "
            f"({p.platform_cpu_s / max(p.records_expected + len(p.burst_list_ms), 1) * 1e6:.0f}"
            " us per request)"
            for label, p in f.phases.items()
        )
        + ".",
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
    parser.add_argument(
        "--only-shipped", action="store_true", help="skip the same-run baseline (profiling)"
    )
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
    (args.work_dir / "figures.json").write_text(json.dumps(dataclasses.asdict(figures)))
    if not args.no_report:
        sections.write_section(args.report, "analysts", text)


if __name__ == "__main__":
    _ = fleet  # the fleet module is load.py's; imported here so a missing file fails early
    main()
