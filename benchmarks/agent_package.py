"""The agent as endpoints install it: bundle build time and size, idle memory, install to online.

    PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/agent_package.py   # root: install, upgrade

- build: `build_bundle` into an empty cache (cold, the real PyInstaller run), then again (warm);
- size: the bundle directory, as tar.gz, and as the deb `tether agent package` writes;
- idle RSS: one platform, two agents enrolled into it: the bundle's `tether-agent run` and the
  virtualenv's `tether agent run` (the same-run baseline), connected and idle, sampled a few
  times 5 s apart; the figure is the median of the process tree's RSS;
- install to online: tests/packaging/test_install.py run once, timing `dpkg -i` (which enrolls)
  through the agent's start to the platform showing it online;
- upgrade and rollback: tests/packaging/test_upgrade.py run once, timing `tether agent upgrade`
  (upload, sign, send, verify, unpack, restart, connect, job ended) to a re-versioned bundle,
  then to a bundle that exits at once (until the job ended "rolled back"); the install to online
  of the same run is the baseline they are compared with.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from tests.e2e.harness import Children, Platform, tether_command, wait_online

import sections
from tether.packaging.bundle import Bundle, build_bundle
from tether.packaging.packages import build_deb

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def sizes(bundle: Bundle, work: Path) -> dict[str, float]:
    archive = work / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(bundle.directory, arcname="tether-agent")
    deb = work / "agent.deb"
    build_deb(bundle.directory, "placeholder-token", deb, "0.0.0")
    return {
        "dir_mib": directory_bytes(bundle.directory) / MIB,
        "tgz_mib": archive.stat().st_size / MIB,
        "deb_mib": deb.stat().st_size / MIB,
    }


# The same virtualenv agent with what docs/adr/0052 made lazy imported up front, as before it:
# the within-run baseline for that change (cryptography's bindings, Pygments via rich's
# traceback renderer, every action module and the script machinery).
EAGER = (
    "import cryptography.x509, rich.traceback, pygments.lexers, "
    "tether.agent.actions.scripts, tether.agent.actions.processes, tether.agent.actions.files, "
    "tether.agent.actions.transfers, tether.agent.actions.isolation, tether.agent.actions.system; "
    "from tether.agent.entry import main; main()"
)
# The bundle's entry point on the virtualenv's interpreter: the agent's command only.
LAZY = "from tether.agent.entry import main; main()"


def idle_rss(
    bundle: Bundle, work: Path, samples: int, idle_seconds: float, *, eager: bool = False
) -> dict[str, float]:
    children = Children(work / "logs")
    try:
        server = Platform(work / "platform", children)
        server.init()
        server.start()
        admin = server.login(work / "admin")
        pids: dict[str, int] = {}
        hosts: dict[str, str] = {}
        kinds = [
            ("bundle", [str(bundle.executable)]),
            ("venv", [*tether_command(), "agent"]),
        ]
        if eager:
            kinds += [
                ("entry-lazy", [sys.executable, "-c", LAZY]),
                ("entry-eager", [sys.executable, "-c", EAGER]),
            ]
        for kind, command in kinds:
            state = work / f"state-{kind}"
            token = admin.json("enroll-token", "create", "--uses", "1")["token"]
            subprocess.run(
                [*command, "enroll", "--token", token, "--state-dir", str(state)],
                check=True,
                capture_output=True,
                env=server.env,
                timeout=60,
            )
            hosts[kind] = json.loads((state / "identity.json").read_text())["host_id"]
            proc = children.spawn(
                f"agent-{kind}", [*command, "run", "--state-dir", str(state)], server.env
            )
            pids[kind] = proc.pid
        with admin.api() as api:
            for host in hosts.values():
                wait_online(api, host, timeout=60)
        time.sleep(idle_seconds)
        readings: dict[str, list[int]] = {kind: [] for kind in pids}
        for _ in range(samples):
            for kind, pid in pids.items():
                readings[kind].append(tree_rss(pid))
            time.sleep(5)
        return {kind: statistics.median(values) / MIB for kind, values in readings.items()}
    finally:
        children.kill_all()


def install_to_online(work: Path) -> float | None:
    if os.geteuid() != 0:
        return None
    timing = work / "install.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={work / 'pytest'}",
            "tests/packaging/test_install.py",
        ],
        cwd=REPO,
        env={**os.environ, "TETHER_INSTALL_TIMING": str(timing)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not timing.exists():
        print(done.stdout[-3000:], file=sys.stderr)
        return None
    seconds: float = json.loads(timing.read_text())["install_to_online_seconds"]
    return seconds


def upgrade_times(work: Path) -> dict[str, float] | None:
    """Upgrade and rollback seconds from one run of the packaged agent's upgrade test."""
    if os.geteuid() != 0:
        return None
    timing = work / "upgrade.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={work / 'pytest-upgrade'}",
            "tests/packaging/test_upgrade.py",
        ],
        cwd=REPO,
        env={**os.environ, "TETHER_UPGRADE_TIMING": str(timing)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not timing.exists():
        print(done.stdout[-3000:], file=sys.stderr)
        return None
    figures: dict[str, float] = json.loads(timing.read_text())
    return figures


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument(
        "--idle-only",
        action="store_true",
        help="only the idle RSS, from the cached bundle, against the eager-import baseline",
    )
    args = parser.parse_args()
    if args.idle_only:
        idle_only(args)
        return
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as scratch:
        work = Path(scratch)
        cold = build_bundle(work / "cache")
        started = time.monotonic()
        warm = build_bundle(work / "cache")
        warm_seconds = time.monotonic() - started
        assert cold.built_now
        assert not warm.built_now
        size = sizes(cold, work)
        rss = idle_rss(cold, work, args.samples, args.idle_seconds)
        load_before = load_average()
        online = install_to_online(work)
        upgrade = upgrade_times(work)
        load_after = load_average()
    online_text = f"{online:.1f} s" if online is not None else "not measured (needs root)"
    if upgrade is not None:
        ratio = f" ({upgrade['upgrade_seconds'] / online:.1f}x install to online)" if online else ""
        upgrade_text = f"{upgrade['upgrade_seconds']:.1f} s{ratio}"
        rollback_text = f"{upgrade['rollback_seconds']:.1f} s"
        supervisor_text = (
            f"{upgrade['supervisor_rss_mib']:.1f} MiB (the upgraded agent beside it: "
            f"{upgrade['upgraded_agent_rss_mib']:.1f} MiB)"
        )
    else:
        upgrade_text = rollback_text = supervisor_text = "not measured (needs root)"
    lines = [
        "## The agent as endpoints install it (`benchmarks/agent_package.py`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, PyInstaller onedir bundle, docs/adr/0042). Budget: "
        "bundle <= 40 MB compressed, idle RSS <= 40 MiB.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| bundle build, cold (PyInstaller) | {cold.seconds:.0f} s |",
        f"| bundle build, warm (content-hash cache hit) | {warm_seconds:.2f} s |",
        f"| bundle on disk | {size['dir_mib']:.1f} MiB |",
        f"| bundle as tar.gz (level 6) | {size['tgz_mib']:.1f} MiB |",
        f"| deb as `tether agent package` writes it (gzip) | {size['deb_mib']:.1f} MiB |",
        f"| idle agent RSS, bundle (median of {args.samples}) | {rss['bundle']:.1f} MiB |",
        f"| idle agent RSS, virtualenv agent, same run (baseline) | {rss['venv']:.1f} MiB |",
        f"| ratio bundle / virtualenv | {rss['bundle'] / rss['venv']:.2f} |",
        f"| install to online (`dpkg -i` with enrollment, start, online on the platform) | {online_text} |",
        f"| upgrade to a re-versioned bundle (`tether agent upgrade`, until the job ended upgraded) | {upgrade_text} |",
        f"| rollback from a bundle that exits at once (until the job ended rolled back) | {rollback_text} |",
        f"| RSS of the trial supervisor that stays after an upgrade, until the next restart | {supervisor_text} |",
        "",
        f"Load average (1, 5, 15 min) before the install and upgrade runs: {load_before}; after: "
        f"{load_after}. The machine is shared; compare figures within one run only. Upgrade and "
        "rollback are one run each of tests/packaging/test_upgrade.py (window 25 s).",
        "",
        f"Idle: both agents connected to one platform for {args.idle_seconds:.0f} s before the "
        "first sample, samples 5 s apart; RSS of the agent's whole process tree.",
    ]
    text = "\n".join(lines)
    print(text)
    sections.write_section(args.report, "agent_package", text)


def idle_only(args: argparse.Namespace) -> None:
    """Idle RSS of the bundle and of the virtualenv agent, lazy (as shipped) and eager (as before
    docs/adr/0052), all in one run against one platform."""
    cache = Path(os.environ.get("TETHER_BUNDLE_CACHE") or "/var/cache/tether-tests/bundles")
    before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as scratch:
        bundle = build_bundle(cache)
        rss = idle_rss(bundle, Path(scratch), args.samples, args.idle_seconds, eager=True)
    after = Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        "## Idle agent memory after lazy imports (`benchmarks/agent_package.py --idle-only`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs "
        f"shared with other work; load average {' '.join(before)} before, {' '.join(after)} "
        f"after; Python {sys.version.split()[0]}). Budget: idle RSS <= 40 MiB (docs/adr/0052).",
        "",
        "| agent, idle and connected | RSS (median of "
        f"{args.samples}) | ratio to the eager baseline |",
        "|---|---|---|",
        "| agent entry on the virtualenv's Python, importing as before (baseline, same run) | "
        f"{rss['entry-eager']:.1f} MiB | 1.00 |",
        f"| agent entry on the virtualenv's Python, lazy imports | {rss['entry-lazy']:.1f} MiB | "
        f"{rss['entry-lazy'] / rss['entry-eager']:.2f} |",
        f"| bundle (`tether-agent run`), lazy imports | {rss['bundle']:.1f} MiB | "
        f"{rss['bundle'] / rss['entry-eager']:.2f} |",
        f"| `tether agent run` (the whole CLI in a virtualenv, for reference) | "
        f"{rss['venv']:.1f} MiB | {rss['venv'] / rss['entry-eager']:.2f} |",
        "",
        f"All connected to one platform for {args.idle_seconds:.0f} s before the first sample, "
        "samples 5 s apart; RSS of each agent's process tree. The two entry rows run "
        "`tether.agent.entry` (what the bundle freezes) on the virtualenv's interpreter; the "
        "eager one first imports what this change made lazy (cryptography, rich.traceback and "
        "Pygments, every action module). `tether agent run` loads the analyst CLI and the "
        "platform's command modules too, so it gains nothing from the change.",
    ]
    text = "\n".join(lines)
    print(text)
    sections.write_section(args.report, "agent_idle_rss", text, script="agent_package")


if __name__ == "__main__":
    main()
