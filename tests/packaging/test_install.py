"""The deb the platform builds, installed into a Debian root WITHOUT Python, in a network namespace
of its own: it enrolls at install, comes online, runs a script on its embedded interpreter, is
isolated, and is removed leaving no rule, unit or file behind."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.e2e.harness import Children, Cli, tether_command, wait_for, wait_online
from tests.e2e.test_actions import finished, output, run
from tests.netns.world import TABLE, NamespacedPlatform
from tests.packaging import debian_root
from tests.packaging.conftest import bundle_cache

pytestmark = pytest.mark.e2e

SCRIPT = """
import json, sys
import psutil
from tether import script
script.row(frozen=getattr(sys, "frozen", False), executable=sys.executable,
           agent=psutil.Process().parent().name())
print("ran on", sys.executable)
"""


class PackagePlatform(NamespacedPlatform):
    """Both addresses by IP: the Debian root has its own /etc/hosts, not the namespace's."""

    def __init__(self, root: Path, children: Children, net: netns.Topology) -> None:
        super().__init__(root, children, net)
        self.env["TETHER_AGENT_PUBLIC_URL"] = f"wss://{net.platform_v4}:{self.agent_port}"
        self.env["TETHER_BUNDLE_CACHE"] = str(bundle_cache())


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


def _in_root(net: netns.Topology, root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        net.exec_argv(net.endpoint, ["chroot", str(root), *argv]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )


def _leftovers(root: Path) -> list[str]:
    candidates = [
        "opt/tether-agent",
        "var/lib/tether-agent",
        "lib/systemd/system/tether-agent.service",
        "etc/systemd/system/multi-user.target.wants/tether-agent.service",
    ]
    return [c for c in candidates if (root / c).exists() or (root / c).is_symlink()]


def test_the_deb_installs_into_a_root_without_python_and_leaves_no_trace(
    agent_bundle: object,
    scene: tuple[netns.Topology, PackagePlatform, Cli, Path],
    tmp_path: Path,
) -> None:
    net, platform, admin, root = scene
    assert not list((root / "usr" / "bin").glob("python*"))
    assert not list((root / "usr" / "lib").glob("python3*"))
    assert not list((root / "usr" / "lib" / "x86_64-linux-gnu").glob("libpython*"))

    deb = tmp_path / "tether-agent.deb"
    built = subprocess.run(
        [
            *tether_command(),
            "agent",
            "package",
            "--data",
            str(platform.data),
            "--format",
            "deb",
            "--segment",
            "ir",
            "--uses",
            "1",
            "--expires",
            "1h",
            "--output",
            str(deb),
        ],
        capture_output=True,
        text=True,
        env=platform.env,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert "enrolls into segment ir" in built.stdout

    (root / "tmp" / "tether-agent.deb").write_bytes(deb.read_bytes())
    started = time.monotonic()
    installed = _in_root(net, root, "dpkg", "-i", "/tmp/tether-agent.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # No systemd in a chroot: the package says how to start the agent, which is the unit's line.
    assert "systemd is not running" in installed.stdout
    assert not (root / "opt/tether-agent/enrollment.token").exists()
    identity = json.loads((root / "var/lib/tether-agent/identity.json").read_text())
    host_id = identity["host_id"]
    unit = (root / "lib/systemd/system/tether-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    agent = platform.children.spawn(
        "packaged-agent",
        net.exec_argv(net.endpoint, ["chroot", str(root), *exec_start.split("=", 1)[1].split()]),
        {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TETHER_LOG_FORMAT": "json"},
    )
    with admin.api() as api:
        try:
            wait_online(api, host_id, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{agent.output()}") from None
    install_to_online = time.monotonic() - started
    host = next(h for h in admin.json("hosts") if h["id"] == host_id)
    assert host["segment"] == "ir"

    # Through the API, then the stored output: what the endpoint reported, not a live stream.
    with admin.api() as api:
        job_id = run(api, host_id, "script.run", {"source": SCRIPT, "params": {}})
        job = finished(api, job_id, timeout=60)
        assert job["state"] == "succeeded", job
        pieces = output(api, job_id)
    rows = [p["fields"] for p in pieces if p["stream"] == "row"]
    assert rows == [
        {"frozen": True, "executable": "/opt/tether-agent/tether-agent", "agent": "tether-agent"}
    ]
    stdout = "".join(p["text"] for p in pieces if p["stream"] == "stdout")
    assert stdout == "ran on /opt/tether-agent/tether-agent\n"

    isolated = admin.run("isolate", host_id)
    assert isolated.returncode == 0, isolated.stderr
    assert net.run(net.endpoint, "nft", "list", "table", "inet", TABLE, check=False).returncode == 0

    # Installing the package again runs dpkg's upgrade path: identity and isolation stay.
    again = _in_root(net, root, "dpkg", "-i", "/tmp/tether-agent.deb")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((root / "var/lib/tether-agent/identity.json").read_text()) == identity
    assert net.run(net.endpoint, "nft", "list", "table", "inet", TABLE, check=False).returncode == 0

    # What systemctl stop does, then what dpkg does on removal: release, remove, purge the state.
    agent.popen.send_signal(signal.SIGTERM)
    agent.wait(20)
    removed = _in_root(net, root, "dpkg", "--purge", "tether-agent")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert net.run(net.endpoint, "nft", "list", "table", "inet", TABLE, check=False).returncode != 0
    assert _leftovers(root) == []
    assert _in_root(net, root, "dpkg", "-s", "tether-agent").returncode != 0

    records = admin.json("audit", "list", "--limit", "1000")
    token_records = [r for r in records if r["action"] == "enrollment_token.create"]
    assert token_records
    assert token_records[-1]["actor"] == "platform host"
    assert token_records[-1]["source"] == "tether agent package --format deb"
    enrolled = [r for r in records if r["action"] == "agent.enroll" and r["outcome"] == "success"]
    assert enrolled[-1]["target"] == f"host:{host_id}"
    assert enrolled[-1]["details"]["token_id"] == int(token_records[-1]["target"].split(":")[1])
    report = os.environ.get("TETHER_INSTALL_TIMING")
    if report:
        Path(report).write_text(json.dumps({"install_to_online_seconds": install_to_online}))
    wait_for(lambda: not agent.alive(), timeout=5, what="the agent to have stopped")
