"""Signed self-upgrade of the packaged agent, in a Debian root WITHOUT Python, in a network
namespace of its own (docs/adr/0051): the deb's agent upgrades to a re-versioned bundle over its
own connection and comes back online as the new version; a bundle that exits at once is rolled
back by the agent itself within the window, the job ending "rolled back"; a bundle signed by a
key the agent did not pin is refused before anything is fetched; each ending is in the chain."""

import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests import netns
from tests.e2e.harness import Children, Cli, tether_command, wait_for, wait_online
from tests.packaging import debian_root
from tests.packaging.test_install import PackagePlatform, _in_root, _leftovers
from tether.packaging.bundle import Bundle

pytestmark = pytest.mark.e2e

# Short enough for a lean test, long enough for a loaded 2-core machine to start the bundle.
WINDOW_SECONDS = 25
REHEARSAL = "0.1.0+rehearsal"
BROKEN = "0.1.0+broken"


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[tuple[netns.Topology, PackagePlatform, Cli, Path]]:
    netns.skip_unless_available()
    debian_root.skip_unless_available()
    children = Children(tmp_path / "logs")
    with netns.topology() as net:
        try:
            platform = PackagePlatform(tmp_path, children, net)
            platform.init()
            platform.start()
            admin = platform.login(tmp_path / "admin-cli")
            admin.ok("segment", "create", "ir")
            admin.ok("segment", "set", "ir", "--active-response", "on")
            with debian_root.fresh_root(tmp_path / "debian") as root:
                yield net, platform, admin, root
        finally:
            children.kill_all()


def _broken_archive(path: Path) -> None:
    """A bundle archive whose executable exits at once: what a bad build looks like."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data, mode in (
            ("tether-agent/tether-agent", b"#!/bin/sh\nexit 1\n", 0o755),
            ("tether-agent/VERSION", f"{BROKEN}\n".encode(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))


def _upgrade(admin: Cli, bundle: Path, host_id: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    done = admin.run(
        "agent", "upgrade", "--bundle", str(bundle), "--hosts", host_id, "--json", timeout=300
    )
    took = time.monotonic() - started
    assert done.stdout.strip(), done.stderr
    rollout: dict[str, Any] = json.loads(done.stdout)
    (host,) = rollout["hosts"]
    assert (done.returncode == 0) == (host["outcome"] == "upgraded"), done.stderr
    return host, took


def _version_online(admin: Cli, host_id: str, version: str) -> None:
    def check() -> bool:
        host = next(h for h in admin.json("hosts") if h["id"] == host_id)
        return bool(host["online"]) and host["agent_version"] == version

    wait_for(check, timeout=60, interval=0.5, what=f"host {host_id} online as {version}")


def test_the_packaged_agent_upgrades_rolls_back_and_refuses_a_foreign_signature(
    agent_bundle: Bundle,
    scene: tuple[netns.Topology, PackagePlatform, Cli, Path],
    tmp_path: Path,
) -> None:
    net, platform, admin, root = scene
    assert not list((root / "usr" / "bin").glob("python*"))
    deb = tmp_path / "tether-agent.deb"
    built = subprocess.run(
        [
            *tether_command(),
            *("agent", "package", "--data", str(platform.data), "--format", "deb"),
            *("--segment", "ir", "--output", str(deb)),
        ],
        capture_output=True,
        text=True,
        env=platform.env,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (root / "tmp" / "tether-agent.deb").write_bytes(deb.read_bytes())
    installed = _in_root(net, root, "dpkg", "-i", "/tmp/tether-agent.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    state = root / "var/lib/tether-agent"
    host_id = json.loads((state / "identity.json").read_text())["host_id"]
    # The key it pinned at enrollment is the platform's.
    with admin.api() as api:
        pinned = api.get("/enroll/upgrade-key").text
    assert (state / "upgrade-key.pub").read_text().strip() == pinned
    unit = (root / "lib/systemd/system/tether-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    agent = platform.children.spawn(
        "packaged-agent",
        net.exec_argv(net.endpoint, ["chroot", str(root), *exec_start.split("=", 1)[1].split()]),
        {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "TETHER_LOG_FORMAT": "json",
            "TETHER_AGENT_UPGRADE_WINDOW": str(WINDOW_SECONDS),
        },
    )
    with admin.api() as api:
        try:
            wait_online(api, host_id, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{agent.output()}") from None
    _version_online(admin, host_id, "0.1.0")

    # 1. The same build under another version string, made with the bundle tooling.
    rehearsal = tmp_path / "rehearsal.tar.gz"
    made = subprocess.run(
        [
            *tether_command(),
            *("agent", "upgrade-bundle", "--output", str(rehearsal), "--version", REHEARSAL),
        ],
        capture_output=True,
        text=True,
        env=platform.env,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    host, upgrade_seconds = _upgrade(admin, rehearsal, host_id)
    assert host["outcome"] == "upgraded", f"{host}\n{agent.output()}"
    _version_online(admin, host_id, REHEARSAL)
    assert agent.alive()
    assert os.readlink(state / "upgrades" / "current") == REHEARSAL
    # The process started as the agent is now the trial's supervisor (same pid), the new
    # version its child: what each holds in memory, for the benchmark.
    supervisor = psutil.Process(agent.pid)
    (upgraded,) = supervisor.children()
    assert upgraded.exe().endswith(f"/upgrades/{REHEARSAL}/tether-agent")
    memory = {
        "supervisor_rss_mib": supervisor.memory_info().rss / 2**20,
        "upgraded_agent_rss_mib": upgraded.memory_info().rss / 2**20,
    }

    # 2. A bundle that exits at once: the agent rolls back by itself within the window.
    broken = tmp_path / "broken.tar.gz"
    _broken_archive(broken)
    host, rollback_seconds = _upgrade(admin, broken, host_id)
    assert host["outcome"] == "rolled back", f"{host}\n{agent.output()}"
    assert host["error"] == (
        f"Rolled back to {REHEARSAL}: version {BROKEN} exited with status 1 before it connected."
    )
    assert rollback_seconds < WINDOW_SECONDS + 60
    _version_online(admin, host_id, REHEARSAL)
    assert os.readlink(state / "upgrades" / "current") == REHEARSAL

    # 3. The platform's upgrade key is not the one the agent pinned (a key swapped on the
    # platform host): the agent refuses before fetching a byte.
    (platform.data / "upgrade-signing.key").write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    again = tmp_path / "again.tar.gz"
    made = subprocess.run(
        [
            *tether_command(),
            *("agent", "upgrade-bundle", "--output", str(again), "--version", "0.1.0+foreign"),
        ],
        capture_output=True,
        text=True,
        env=platform.env,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    host, _ = _upgrade(admin, again, host_id)
    assert host["outcome"] == "refused", host
    assert "signature does not verify with this agent's upgrade key" in host["error"]
    assert not (state / "upgrades" / "0.1.0+foreign").exists()
    _version_online(admin, host_id, REHEARSAL)

    records = admin.json("audit", "list", "--limit", "1000")
    requests = [r for r in records if r["action"] == "agent.upgrade.request"]
    assert [r["details"]["version"] for r in requests] == [REHEARSAL, BROKEN, "0.1.0+foreign"]
    endings = [
        (r["details"]["version"], r["details"]["outcome"])
        for r in records
        if r["action"] == "agent.upgrade.end"
    ]
    assert endings == [
        (REHEARSAL, "upgraded"),
        (BROKEN, "rolled back"),
        ("0.1.0+foreign", "refused"),
    ]

    # Stopped as systemd stops it, then purged: the upgrades go with the state directory.
    agent.popen.send_signal(signal.SIGTERM)
    agent.wait(30)
    removed = _in_root(net, root, "dpkg", "--purge", "tether-agent")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert _leftovers(root) == []
    report = os.environ.get("TETHER_UPGRADE_TIMING")
    if report:
        Path(report).write_text(
            json.dumps(
                {
                    "upgrade_seconds": upgrade_seconds,
                    "rollback_seconds": rollback_seconds,
                    **memory,
                }
            )
        )
