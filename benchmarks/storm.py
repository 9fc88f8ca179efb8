"""Restart storm: N simulated agents on one platform process, the process restarted, timed.

    .venv/bin/python benchmarks/storm.py --agents 10000

Steps (all on 127.0.0.1, every process started here is stopped here; the platform, the fleet
and the simulators are those of load.py, on ports of its own so both can run):
  1. `tether server init` in the work directory (once), enroll the fleet (once; cached on disk).
  2. Start the platform, connect all N (first connections gated as in load.py): the same-run
     baseline is this standing-start rate (N / seconds), the rate a fresh process sustains.
  3. For each handshake limit asked (`--limits`, default the platform's 500, then 0 = none) and
     each repeat: SIGTERM the platform (time until the process is gone: the bounded shutdown),
     start a new `tether server run` on the same data, and time from its start until /metrics
     and the simulators both count all N. Shed connections are read from the new process's
     /metrics; the simulators count every other failed attempt.
  4. Figures are printed and written to the `storm` section of docs/performance.md.
"""

import argparse
import asyncio
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import load
import sections
from load import Platform, Ports, Simulators, log, wait_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUDGET_S = 30.0


@dataclasses.dataclass
class Storm:
    limit: int
    stop_s: float
    ready_s: float
    back_s: float
    connected: int
    shed: int
    refused: int
    errors: dict[str, int]
    gave_up: int
    cpu_s: float
    load: tuple[float, float, float]


@dataclasses.dataclass
class Figures:
    agents: int
    simulators: int
    gate: int
    start_s: float = math.nan
    first_connect_s: float = math.nan
    first_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    load_before: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    storms: list[Storm] = dataclasses.field(default_factory=list)
    date: str = ""

    @property
    def first_rate(self) -> float:
        return self.agents / self.first_connect_s


async def shed_count(plat: Platform) -> int:
    text = (await plat.http.get("/metrics")).text
    match = re.search(r"^tether_agent_connections_shed_total (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else -1


async def one_storm(plat: Platform, sims: Simulators, n: int, limit: int, timeout: float) -> Storm:
    os.environ["TETHER_AGENT_HANDSHAKE_LIMIT"] = str(limit)
    before = sims.snapshot()
    log(f"storm (limit {limit}): SIGTERM to the platform")
    stop_s = await plat.stop()
    restart = time.perf_counter()
    ready_s = await plat.start()
    cpu_base = plat.proc.cpu()

    async def back() -> bool:
        return bool(await plat.connected() >= n and sims.total("connected") >= n)

    took = await wait_for(back, timeout, 0.25)
    back_s = time.perf_counter() - restart if took is not None else math.nan
    after = sims.snapshot()
    storm = Storm(
        limit=limit,
        stop_s=stop_s,
        ready_s=ready_s,
        back_s=back_s,
        connected=await plat.connected(),
        shed=await shed_count(plat),
        refused=after["connect_errors"].get("refused", 0)
        - before["connect_errors"].get("refused", 0),
        errors={
            k: v
            for k, v in load._diff(after["connect_errors"], before["connect_errors"]).items()
            if k != "refused"
        },
        gave_up=after["gave_up"] - before["gave_up"],
        cpu_s=plat.proc.cpu() - cpu_base,
        load=os.getloadavg(),
    )
    log(
        f"storm (limit {limit}): stop {stop_s:.2f} s; new process answered after {ready_s:.1f} s; "
        f"{storm.connected}/{n} back after {back_s:.1f} s; shed {storm.shed}; refused "
        f"{storm.refused}; other attempt errors {storm.errors}; gave up {storm.gave_up}; "
        f"load {storm.load[0]:.2f}"
    )
    return storm


async def run(args: argparse.Namespace) -> Figures:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work_dir / "logs", ignore_errors=True)
    (args.work_dir / "logs").mkdir()
    ports = Ports(args.port, args.port + 1, args.port + 2)
    data = load.init_platform(args.work_dir, ports)
    fleet_dir = args.work_dir / "fleet"
    simulators = args.simulators or max(1, min(8, math.ceil(args.agents / 2500)))
    figures = Figures(agents=args.agents, simulators=simulators, gate=args.gate)
    figures.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    await load.ensure_fleet(args, data, fleet_dir, ports)
    if args.enroll_only:
        return figures
    logs = args.work_dir / "logs"
    os.environ["TETHER_AGENT_HANDSHAKE_LIMIT"] = str(args.limits[0])
    plat = Platform(data, ports, logs / "platform.log")
    sims = Simulators()
    n = args.agents
    try:
        figures.start_s = await plat.start()
        await plat.login()
        started = time.perf_counter()
        await sims.start(
            fleet_dir=fleet_dir,
            agents=n,
            processes=simulators,
            url=f"wss://127.0.0.1:{ports.agent}",
            mode="tether",
            gate=args.gate,
            logfile=logs / "sim.log",
        )

        async def all_in() -> bool:
            return bool(sims.total("connected") >= n and await plat.connected() >= n)

        took = await wait_for(all_in, args.connect_timeout, 0.25)
        if took is None:
            raise RuntimeError("Not every agent connected; see the logs.")
        figures.first_connect_s = time.perf_counter() - started
        figures.first_errors = load._not_refused(sims.snapshot()["connect_errors"])
        log(f"first connection: {n} in {figures.first_connect_s:.1f} s")
        await asyncio.sleep(args.settle)
        figures.load_before = os.getloadavg()
        for _ in range(args.repeat):
            for limit in args.limits:
                figures.storms.append(await one_storm(plat, sims, n, limit, args.storm_timeout))
                await asyncio.sleep(args.settle)
    finally:
        await sims.stop()
        if plat.child is not None:
            await plat.stop()
        await plat.http.aclose()
    return figures


def _fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _limit(limit: int) -> str:
    return f"rate-following, at most {limit}" if limit else "none"


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def report(args: argparse.Namespace, f: Figures, command: str) -> str:
    info = load.machine()
    lines = [
        f"## Restart storm: {f.agents} agents, one platform process",
        "",
        "Written by `benchmarks/storm.py` from its latest real run.",
        "",
        f"- Date: {f.date} (start of the run)",
        f"- Machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} memory, "
        f"{info['kernel']}; Python {info['python']}, {info['openssl']}",
        f"- Agents: {f.agents} real agent connections (`tether.agent.connection.AgentConnection`, "
        f"the retry schedule of docs/adr/0049) in {f.simulators} simulator processes on the same "
        "2 cores as the platform",
        "- Load average (1, 5, 15 min) before the storms: "
        + ", ".join(_fmt(x, ".2f") for x in f.load_before)
        + " (the machine is shared with other work)",
        "",
        "Reproduce (the first run enrolls the fleet, later runs reuse it):",
        "",
        "```",
        command,
        "```",
        "",
        "| handshake limit | stop (SIGTERM to exit) | new process answered | all back (from new "
        "process start) | budget 30 s | shed | refused | other failed attempts | gave up | "
        "platform CPU | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in f.storms:
        ok = s.back_s <= BUDGET_S and s.gave_up == 0 and s.connected == f.agents
        lines.append(
            f"| {_limit(s.limit)} | {_fmt(s.stop_s, '.2f')} s | {_fmt(s.ready_s, '.1f')} s | "
            f"{_fmt(s.back_s, '.1f')} s ({s.connected}/{f.agents}) | "
            f"{'pass' if ok else '**MISS**'} | {s.shed} | {s.refused} | "
            f"{s.errors or 'none'} | {s.gave_up} | {_fmt(s.cpu_s, '.1f')} s | {s.load[0]:.2f} |"
        )
    lines += ["", "Medians by handshake limit, against the same run's standing start:", ""]
    for limit in args.limits:
        runs = [s for s in f.storms if s.limit == limit]
        finished = [s.back_s for s in runs if not math.isnan(s.back_s)]
        back = _median(finished)
        stop = _median([s.stop_s for s in runs])
        unfinished = len(runs) - len(finished)
        lines.append(
            f"- limit {_limit(limit)}: {len(finished)} of {len(runs)} storms had all agents back "
            f"within {args.storm_timeout:.0f} s"
            + (f" (the other {unfinished} had not: handshakes timing out)" if unfinished else "")
            + f"; median of those {_fmt(back, '.1f')} s ({_fmt(f.agents / back, '.0f')} "
            f"agents/s; {_fmt(back / BUDGET_S, '.2f')} of the 30 s budget), "
            f"{_fmt(back / f.first_connect_s, '.2f')}x the same run's first connection of all "
            f"{f.agents} from a standing start ({_fmt(f.first_connect_s, '.1f')} s, "
            f"{_fmt(f.first_rate, '.0f')}/s, simulators gated to {f.gate} first connections "
            f"in flight each); median stop {_fmt(stop, '.2f')} s"
        )
    lines += [
        "",
        "### What was measured, and how",
        "",
        "- Stop: SIGTERM to `tether server run` until the process has exited (the harness closes "
        'its own HTTPS connection first). The platform sends every agent 1001 "going away", '
        "drops connections still in their handshake, and aborts what has not closed after 2 s.",
        "- All back: from starting the new process until its /metrics `tether_agents_connected` "
        'and the simulators both count all N. "Refused" attempts are agents knocking while no '
        'process listens; "shed" are connections the new process closed before their TLS '
        "handshake (admission control, `tether_agent_connections_shed_total`); both are "
        "expected and cheap. Any other failed attempt is listed.",
        "- Agents: after 1001 (or a session that ended without a close frame) each waits a "
        "random moment of 0-10 s; refusals and sheds during the restart are retried after "
        "1-5 s; their backoff does not grow (docs/adr/0049).",
        "- The limit: handshakes in flight follow the completion rate (2 s worth, at least 32) "
        "up to the platform's `agent_handshake_limit` (env `TETHER_AGENT_HANDSHAKE_LIMIT` for "
        "the restarted process); none turns admission control off, the behaviour before it.",
        "- The simulators share the 2 cores with the platform and need about as much CPU per "
        "handshake as the platform does, so the figures are a floor for the platform alone.",
        "",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tether restart storm (see module docstring).")
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--work-dir", type=Path, default=HERE / "out" / "storm")
    parser.add_argument("--port", type=int, default=27643, help="analyst port; +1 agents")
    parser.add_argument("--simulators", type=int, default=0, help="processes (0: 1 per 2500)")
    parser.add_argument("--gate", type=int, default=50, help="first connections in flight/sim")
    parser.add_argument(
        "--limits",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[500, 0],
        help="handshake limits to storm with, comma-separated (0: none)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="storms per limit")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--connect-timeout", type=float, default=240.0)
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--enroll-only", action="store_true", help="enroll the fleet and stop")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument("--section", default="storm", help="section of the report to write")
    parser.add_argument(
        "--rerender", type=Path, help="rewrite the report from a run's saved figures.json"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    limit = load.raise_fd_limit()
    if limit < args.agents + 1000:
        sys.exit(f"RLIMIT_NOFILE is {limit}; {args.agents} agents need more.")
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/storm.py", *sys.argv[1:]]
    )
    if args.rerender:
        stored = json.loads(args.rerender.read_text())
        command = stored.pop("command")
        storms = [Storm(**{**x, "load": tuple(x["load"])}) for x in stored.pop("storms")]
        figures = Figures(**{**stored, "storms": storms})
        if not figures.date:
            mtime = args.rerender.stat().st_mtime
            figures.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mtime))
        args.limits = list(dict.fromkeys(x.limit for x in storms))
        given = re.search(r"--storm-timeout (\S+)", command)
        if given:
            args.storm_timeout = float(given.group(1))
    else:
        started = time.perf_counter()
        figures = asyncio.run(run(args))
        log(f"done in {time.perf_counter() - started:.0f} s")
        if args.enroll_only:
            return
        data: dict[str, Any] = {**dataclasses.asdict(figures), "command": command}
        (args.work_dir / "figures.json").write_text(json.dumps(data))
    sections.write_section(args.report, args.section, report(args, figures, command), "storm")
    log(f"report written to {args.report}")


if __name__ == "__main__":
    main()
