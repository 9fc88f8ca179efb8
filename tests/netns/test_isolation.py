"""Isolation end to end with real packets: a real platform in the root namespace, a real agent in
an endpoint namespace, and an "outside" namespace the endpoint should or should not reach.

Runs as root only (skipped with the reason elsewhere; CI runs as root and must run it).
"""

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.e2e.harness import Children, Cli, Platform, tether_command, wait_for, wait_online

pytestmark = pytest.mark.e2e

TABLE = "tether_isolation"


class NamespacedPlatform(Platform):
    """A platform reached on the root side of the endpoint's link, under a name the endpoint
    resolves through its namespace's hosts file (so a test can move that name elsewhere)."""

    def __init__(self, root: Path, children: Children, net: netns.Topology) -> None:
        super().__init__(root, children)
        self.listen_host = str(net.platform_v4)
        self.hostname = f"tether-platform-{os.getpid()}"
        self.cert_ips = [str(net.platform_v4)]
        self.env = {
            **self.env,
            "TETHER_AGENT_PUBLIC_URL": f"wss://{self.hostname}:{self.agent_port}",
            "TETHER_PUBLIC_URL": f"https://{net.platform_v4}:{self.api_port}",
        }


class World:
    def __init__(self, net: netns.Topology, platform: NamespacedPlatform, admin: Cli) -> None:
        self.net = net
        self.platform = platform
        self.admin = admin
        self.children = platform.children
        self.state_dir: Path | None = None
        self.agent: Any = None
        self.host_id = ""

    def point_name_at(self, address: object) -> None:
        self.net.write_hosts(
            self.net.endpoint, f"127.0.0.1 localhost\n{address} {self.platform.hostname}\n"
        )

    def enroll(self, state_dir: Path) -> None:
        token = self.admin.json("enroll-token", "create", "--segment", "ir", "--uses", "1")
        enroll = self.children.spawn(
            f"enroll-{state_dir.name}",
            self.net.exec_argv(
                self.net.endpoint,
                [
                    *tether_command(),
                    "agent",
                    "enroll",
                    "--token",
                    token["token"],
                    "--state-dir",
                    str(state_dir),
                ],
            ),
            self.platform.env,
        )
        assert enroll.wait(60) == 0, enroll.output()
        self.state_dir = state_dir
        self.host_id = json.loads((state_dir / "identity.json").read_text())["host_id"]

    def start_agent(self) -> None:
        assert self.state_dir is not None
        self.agent = self.children.spawn(
            f"agent-{self.state_dir.name}",
            self.net.exec_argv(
                self.net.endpoint,
                [*tether_command(), "agent", "run", "--state-dir", str(self.state_dir)],
            ),
            self.platform.env,
        )
        with self.admin.api() as api:
            wait_online(api, self.host_id, timeout=30)

    def stop_agent(self) -> None:
        assert self.agent is not None
        self.agent.popen.send_signal(signal.SIGTERM)
        self.agent.wait(20)
        with self.admin.api() as api:
            wait_online(api, self.host_id, online=False, timeout=30)

    def host(self) -> dict[str, Any]:
        with self.admin.api() as api:
            found: dict[str, Any] = api.get(f"/hosts/{self.host_id}").json()
        return found

    def outbound_works(self, port: int) -> bool:
        return self.net.can_connect(self.net.endpoint, self.net.outside_v4, port)

    def inbound_works(self, port: int) -> bool:
        return self.net.can_connect(self.net.outside, self.net.endpoint_outside_v4, port)

    def agent_answers(self) -> bool:
        """A response job through the platform, run by the agent and reported back."""
        with self.admin.api() as api:
            batch = api.post(
                "/jobs",
                json={"action": "files.list", "args": {"path": "/"}, "hosts": [self.host_id]},
            ).json()
            job_id = batch["jobs"][0]["id"]
            seen: dict[str, Any] = {}

            def ended() -> bool:
                seen.update(api.get(f"/jobs/{job_id}").json())
                return seen["state"] not in {"queued", "delivered", "running"}

            wait_for(ended, timeout=30, interval=0.1, what="the agent to answer a job")
        return bool(seen["state"] == "succeeded")


def echo_server(listener: socket.socket) -> None:
    """Accept connections and answer each with one line: proof that replies get back."""

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello from the endpoint\n")

    threading.Thread(target=serve, daemon=True).start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    netns.skip_unless_available()
    root = tmp_path_factory.mktemp("isolation")
    children = Children(root / "logs")
    with netns.topology() as net:
        try:
            platform = NamespacedPlatform(root, children, net)
            platform.init()
            platform.start()
            admin = platform.login(root / "admin-cli")
            admin.ok("segment", "create", "ir")
            admin.ok("segment", "set", "ir", "--active-response", "on")
            built = World(net, platform, admin)
            built.point_name_at(net.platform_v4)
            yield built
        finally:
            children.kill_all()


@pytest.fixture
def endpoint(world: World, tmp_path: Path) -> Iterator[World]:
    """A fresh agent in the endpoint namespace for each test; no isolation left behind."""
    world.point_name_at(world.net.platform_v4)
    world.enroll(tmp_path / "agent")
    world.start_agent()
    try:
        yield world
    finally:
        if world.agent is not None and world.agent.alive():
            world.agent.popen.kill()
            world.agent.wait(10)
        for table in (TABLE, "tether_script_isolation"):
            world.net.run(world.net.endpoint, "nft", "delete", "table", "inet", table, check=False)
        world.point_name_at(world.net.platform_v4)


def test_outbound_isolation_blocks_the_outside_keeps_inbound_and_the_platform(
    endpoint: World,
) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    outside_v6 = net.listen(net.outside, net.outside_v6)
    inbound = net.listen(net.endpoint, net.endpoint_outside_v4)
    echo_server(inbound)
    out_port, out_v6_port = outside.getsockname()[1], outside_v6.getsockname()[1]
    in_port = inbound.getsockname()[1]
    assert w.outbound_works(out_port)

    done = w.admin.run("isolate", w.host_id)
    assert done.returncode == 0, done.stderr
    assert "isolated (outbound)" in done.stdout

    assert not w.outbound_works(out_port)
    assert not net.can_connect(net.endpoint, net.outside_v6, out_v6_port)
    # Inbound connections still get in, and their replies get back out.
    with net.connect(net.outside, net.endpoint_outside_v4, in_port) as conn:
        assert conn.recv(64) == b"hello from the endpoint\n"
    # The agent stays connected and answers jobs.
    assert w.agent_answers()
    isolation = w.host()["isolation"]
    assert (isolation["state"], isolation["mode"], isolation["by"]) == (
        "isolated",
        "outbound",
        "admin",
    )
    assert TABLE in net.nft_ruleset(net.endpoint)

    # Full mode: new inbound connections are refused too.
    full = w.admin.run("isolate", w.host_id, "--mode", "full")
    assert full.returncode == 0, full.stderr
    assert not w.inbound_works(in_port)
    assert not w.outbound_works(out_port)
    assert w.agent_answers()

    released = w.admin.run("unisolate", w.host_id)
    assert released.returncode == 0, released.stderr
    assert w.outbound_works(out_port)
    assert w.inbound_works(in_port)
    assert TABLE not in net.nft_ruleset(net.endpoint)
    assert w.host()["isolation"]["state"] == "not isolated"

    with w.admin.api() as api:
        records = api.get("/audit", params={"limit": 1000}).json()
    asked = [
        (
            r["actor"],
            r["details"]["action"],
            r["details"]["args"].get("mode"),
            r["details"]["hosts"],
        )
        for r in records
        if r["action"] == "job.submit" and r["details"]["action"].startswith("isolation.")
    ]
    assert ("admin", "isolation.isolate", "outbound", [w.host_id]) in asked
    assert ("admin", "isolation.isolate", "full", [w.host_id]) in asked
    assert ("admin", "isolation.release", None, [w.host_id]) in asked


def test_isolation_survives_an_agent_restart(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    assert w.admin.run("isolate", w.host_id).returncode == 0
    w.stop_agent()
    # The rules belong to the endpoint, not to the agent process.
    assert not w.outbound_works(port)
    w.start_agent()
    assert not w.outbound_works(port)
    assert w.agent_answers()
    assert w.host()["isolation"]["state"] == "isolated"
    assert w.admin.run("unisolate", w.host_id).returncode == 0
    assert w.outbound_works(port)


def test_rules_that_would_cut_the_platform_off_are_rolled_back(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    # The platform's name now points somewhere nothing answers: rules allowing only that
    # address would cut the agent off at its next connection.
    w.point_name_at("198.51.100.77")
    failed = w.admin.run("isolate", w.host_id)
    assert failed.returncode == 1
    assert "failed:" in failed.stdout
    assert "platform" in failed.stdout
    assert TABLE not in net.nft_ruleset(net.endpoint)
    assert w.outbound_works(port)
    w.point_name_at(net.platform_v4)
    assert w.agent_answers()
    isolation = w.host()["isolation"]
    assert isolation["state"] == "not isolated"
    assert isolation["failed"].startswith("The request to isolate the host failed:")


def test_an_offline_host_is_pending_then_isolated_when_it_returns(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    w.stop_agent()
    queued = w.admin.run("isolate", w.host_id, "--mode", "full")
    assert queued.returncode == 0, queued.stderr
    assert "isolation pending (the host is offline" in queued.stdout
    assert w.host()["isolation"]["state"] == "isolation pending"
    assert w.outbound_works(port)

    w.start_agent()
    started = time.monotonic()
    wait_for(
        lambda: w.host()["isolation"]["state"] == "isolated",
        timeout=20,
        interval=0.1,
        what="the pending isolation to be applied",
    )
    assert time.monotonic() - started < 10
    assert w.host()["isolation"]["mode"] == "full"
    assert not w.outbound_works(port)


def test_the_isolation_control_script_through_the_agent_and_directly(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]

    def control(*params: str) -> str:
        argv = ["run", w.host_id, "--script", "Isolation Control"]
        for param in params:
            argv += ["--param", param]
        done = w.admin.run(*argv, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Through the agent: its tested rules, and the platform is told (the script's job named).
    assert "isolate: isolated." in control("action=isolate", "mode=full")
    assert not w.outbound_works(port)
    assert not w.inbound_works(net.listen(net.endpoint, net.endpoint_outside_v4).getsockname()[1])
    shown = w.host()["isolation"]
    assert (shown["state"], shown["mode"], shown["reported_by_endpoint"]) == (
        "isolated",
        "full",
        True,
    )
    assert "status: isolated." in control("action=status")
    assert "unisolate: not isolated." in control("action=unisolate")
    assert w.outbound_works(port)
    assert w.host()["isolation"]["state"] == "not isolated"
    with w.admin.api() as api:
        records = api.get("/audit", params={"limit": 1000}).json()
    reported = [
        (r["details"]["cause"], r["details"]["isolated"], r["details"]["mode"])
        for r in records
        if r["action"] == "isolation.reported" and r["target"] == f"host:{w.host_id}"
    ]
    assert reported == [("script", True, "full"), ("script", False, None)]

    # Directly from Python: a table of the script's own that keeps the agent's connection.
    assert "isolate: isolated." in control("action=isolate", "method=direct")
    assert "tether_script_isolation" in net.nft_ruleset(net.endpoint)
    assert not w.outbound_works(port)
    assert w.agent_answers()
    assert "unisolate: not isolated." in control("action=unisolate", "method=direct")
    assert "tether_script_isolation" not in net.nft_ruleset(net.endpoint)
    assert w.outbound_works(port)
