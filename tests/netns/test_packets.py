"""Isolation with real packets: the Isolator in an endpoint namespace, sockets everywhere.

Each test builds the namespaces of tests/netns/__init__.py (the platform listens in the root namespace)
and drives an Isolator running inside the endpoint namespace (driver.py). Skipped with the
reason without root, `ip netns` or nft; CI runs them as root.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests import netns
from tests.e2e.certs import client_cert, new_ca
from tests.netns import IPAddress, Topology

ROOT = Path(__file__).resolve().parents[2]
PLATFORM_NAME = "platform.test"
TABLE_LINE = "table inet tether_isolation"


class Driver:
    """The Isolator process inside the endpoint namespace."""

    def __init__(self, net: Topology, state_dir: Path, port: int, backend: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.netns.driver",
            "--state-dir",
            str(state_dir),
            "--agent-url",
            f"wss://{PLATFORM_NAME}:{port}/agent",
            "--backend",
            backend,
        ]
        self.process = subprocess.Popen(
            net.exec_argv(net.endpoint, argv),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, op: str, **args: Any) -> Any:
        """The result of `op`; AssertionError carrying the Isolator's sentence when it failed."""
        answer = self.ask(op, **args)
        assert answer["ok"], answer["error"]
        return answer["result"]

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the isolation driver died (exit status {self.process.poll()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(listener: socket.socket, greeting: bytes = b"hello") -> None:
    """Accept on `listener` until it closes: greet each connection, then echo what it sends."""

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(greeting)
            while data := conn.recv(4096):
                conn.sendall(data)

    def loop() -> None:
        while True:
            try:
                conn, _peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def greeted(net: Topology, namespace: str | None, address: IPAddress, port: int) -> bool:
    """Whether a connection from `namespace` opens and the greeting comes back."""
    try:
        with net.connect(namespace, address, port, timeout=0.5) as client:
            return client.recv(16) == b"hello"
    except OSError:
        return False


def datagram_arrives(net: Topology, address: IPAddress, port: int) -> bool:
    """Whether a UDP datagram from the endpoint reaches `address`:`port` in "outside"."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    receiver = net.socket_in(net.outside, family, socket.SOCK_DGRAM)
    receiver.bind((str(address), port))
    receiver.settimeout(0.5)
    sender = net.socket_in(net.endpoint, family, socket.SOCK_DGRAM)
    try:
        # A datagram the local firewall drops on output fails the send itself (EPERM).
        sender.sendto(b"query", (str(address), port))
        return receiver.recv(16) == b"query"
    except (PermissionError, TimeoutError):
        return False
    finally:
        receiver.close()
        sender.close()


@pytest.fixture
def net() -> Iterator[Topology]:
    netns.skip_unless_available()
    with netns.topology() as built:
        yield built


class Scene:
    """The namespaces with listeners: the platform (root), outside, and one on the endpoint."""

    def __init__(self, net: Topology, tmp_path: Path) -> None:
        self.net = net
        self.state_dir = tmp_path / "state"
        platform = net.listen(None, net.platform_v4)
        self.port = platform.getsockname()[1]
        serve(platform)
        serve(net.listen(None, net.platform_v6, self.port))
        outside = net.listen(net.outside, net.outside_v4)
        self.outside_port = outside.getsockname()[1]
        serve(outside)
        serve(net.listen(net.outside, net.outside_v6, self.outside_port))
        inbound = net.listen(net.endpoint, net.endpoint_outside_v4)
        self.endpoint_port = inbound.getsockname()[1]
        serve(inbound)
        self.resolve_to(net.platform_v4, net.platform_v6)

    def resolve_to(self, *addresses: IPAddress) -> None:
        lines = ["127.0.0.1 localhost", *(f"{a} {PLATFORM_NAME}" for a in addresses)]
        self.net.write_hosts(self.net.endpoint, "\n".join(lines) + "\n")

    def driver(self, backend: str = "nftables") -> Driver:
        return Driver(self.net, self.state_dir, self.port, backend)

    def reaches_platform(self) -> bool:
        net = self.net
        return greeted(net, net.endpoint, net.platform_v4, self.port) and greeted(
            net, net.endpoint, net.platform_v6, self.port
        )

    def reaches_outside(self, v6: bool = False) -> bool:
        net = self.net
        return greeted(
            net, net.endpoint, net.outside_v6 if v6 else net.outside_v4, self.outside_port
        )

    def reached_from_outside(self) -> bool:
        net = self.net
        return greeted(net, net.outside, net.endpoint_outside_v4, self.endpoint_port)

    def table(self) -> bool:
        return TABLE_LINE in self.net.nft_ruleset(self.net.endpoint)


@pytest.fixture
def scene(net: Topology, tmp_path: Path) -> Scene:
    built = Scene(net, tmp_path)
    return built


@pytest.fixture
def driver(scene: Scene) -> Iterator[Driver]:
    started = scene.driver()
    try:
        yield started
    finally:
        started.close()


def test_outbound_mode_keeps_the_platform_and_inbound_connections_and_blocks_the_rest(
    scene: Scene, driver: Driver
) -> None:
    assert scene.reaches_outside()
    assert scene.reaches_outside(v6=True)
    status = driver.call("isolate", mode="outbound")
    assert status["isolated"] is True
    assert status["mode"] == "outbound"
    assert status["backend"] == "nftables"
    assert status["platform"] == [str(scene.net.platform_v4), str(scene.net.platform_v6)]
    assert scene.table()
    assert scene.reaches_platform()
    assert not scene.reaches_outside()
    assert not scene.reaches_outside(v6=True)
    # DNS (or any UDP) to anywhere but the allowlist is an exfiltration channel: shut.
    assert not datagram_arrives(scene.net, scene.net.outside_v4, 53)
    assert not datagram_arrives(scene.net, scene.net.outside_v6, 53)
    # An investigator's connection in, and its reply out.
    assert scene.reached_from_outside()
    assert driver.call("status")["isolated"] is True
    # IPv6 neighbour discovery passes: with the neighbour cache emptied, the platform's IPv6
    # address is found again through the rules.
    scene.net.run(scene.net.endpoint, "ip", "-6", "neigh", "flush", "all")
    assert greeted(scene.net, scene.net.endpoint, scene.net.platform_v6, scene.port)

    assert driver.call("release") == {
        "isolated": False,
        "mode": None,
        "since": None,
        "backend": None,
        "platform": [],
        "allow": [],
    }
    assert not scene.table()
    assert scene.reaches_outside()
    assert scene.reaches_outside(v6=True)
    assert scene.reaches_platform()
    # Releasing again changes nothing and does not fail.
    assert driver.call("release")["isolated"] is False


def test_full_mode_also_refuses_inbound_connections(scene: Scene, driver: Driver) -> None:
    driver.call("isolate", mode="full")
    assert scene.reaches_platform()
    assert not scene.reaches_outside()
    assert not scene.reached_from_outside()
    # Switching to outbound mode replaces the rules in place: inbound works again.
    status = driver.call("isolate", mode="outbound")
    assert status["mode"] == "outbound"
    assert scene.reached_from_outside()
    assert not scene.reaches_outside()


def test_the_allowlist_opens_only_its_network_and_ports(scene: Scene, driver: Driver) -> None:
    net = scene.net
    other = net.listen(net.outside, net.outside_v4)
    serve(other)
    other_port = other.getsockname()[1]
    allow = [{"cidr": f"{net.outside_v4}/32", "ports": [scene.outside_port]}]
    status = driver.call("isolate", mode="full", allow=allow)
    assert status["allow"] == [{"cidr": f"{net.outside_v4}/32", "ports": [scene.outside_port]}]
    assert scene.reaches_outside()
    assert not greeted(net, net.endpoint, net.outside_v4, other_port)
    assert not scene.reaches_outside(v6=True)
    # The ports hold for UDP too (a resolver on the allowlist, say); other ports stay shut.
    assert datagram_arrives(net, net.outside_v4, scene.outside_port)
    assert not datagram_arrives(net, net.outside_v4, other_port)


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
def test_an_outbound_connection_opened_before_isolation_is_cut(
    scene: Scene, driver: Driver, tracked: bool
) -> None:
    net = scene.net
    if tracked:
        # Connection tracking already running, as on most hosts (any stateful firewall).
        net.run(
            net.endpoint,
            "nft",
            "add table inet pre; add chain inet pre c { type filter hook output priority 0; }; "
            "add rule inet pre c ct state new accept",
        )
    c2_listener = net.listen(net.outside, net.outside_v4)
    port = c2_listener.getsockname()[1]
    c2_listener.settimeout(2)
    implant = net.connect(net.endpoint, net.outside_v4, port)
    c2, _peer = c2_listener.accept()
    with implant, c2:
        implant.sendall(b"ping")
        assert c2.recv(4) == b"ping"

        driver.call("isolate", mode="outbound")

        c2.settimeout(0.5)
        implant.settimeout(0.5)
        implant.sendall(b"data")
        with pytest.raises(TimeoutError):
            c2.recv(4)
        c2.sendall(b"cmd!")
        with pytest.raises(TimeoutError):
            implant.recv(4)


def test_an_inbound_session_opened_before_outbound_isolation_keeps_working(
    scene: Scene, driver: Driver
) -> None:
    net = scene.net
    # Tracked from its first packet (most hosts run connection tracking already).
    net.run(
        net.endpoint,
        "nft",
        "add table inet pre; add chain inet pre c { type filter hook input priority 0; }; "
        "add rule inet pre c ct state new accept",
    )
    listener = net.listen(net.endpoint, net.endpoint_outside_v4)
    listener.settimeout(2)
    investigator = net.connect(net.outside, net.endpoint_outside_v4, listener.getsockname()[1])
    shell, _peer = listener.accept()
    with investigator, shell:
        driver.call("isolate", mode="outbound")
        investigator.settimeout(1.0)
        shell.settimeout(1.0)
        investigator.sendall(b"ls\n")
        assert shell.recv(3) == b"ls\n"
        shell.sendall(b"out")
        assert investigator.recv(3) == b"out"


def test_a_platform_that_resolves_wrong_rolls_back_and_changes_nothing(
    scene: Scene, driver: Driver
) -> None:
    net = scene.net
    scene.resolve_to(net.outside_v4)  # nothing listens on the platform port there
    answer = driver.ask("isolate", mode="outbound")
    assert answer == {
        "ok": False,
        "error": (
            f"The platform ({net.outside_v4} port {scene.port}) was unreachable through the new "
            "isolation rules, so they were rolled back and nothing changed."
        ),
    }
    assert not scene.table()
    assert scene.reaches_outside()
    assert driver.call("status")["isolated"] is False

    # Already isolated: a failed change keeps the rules in force, exactly.
    scene.resolve_to(net.platform_v4, net.platform_v6)
    driver.call("isolate", mode="full")
    before = net.nft_ruleset(net.endpoint)
    scene.resolve_to(net.outside_v4)
    assert driver.ask("isolate", mode="outbound")["ok"] is False
    assert net.nft_ruleset(net.endpoint) == before
    assert scene.reaches_platform()
    assert not scene.reached_from_outside()
    assert driver.call("status")["mode"] == "full"


def test_reassert_restores_lost_rules_and_follows_the_platform(
    scene: Scene, driver: Driver
) -> None:
    net = scene.net
    assert driver.call("reassert") == "not isolated"
    scene.resolve_to(net.platform_v4)
    driver.call("isolate", mode="outbound")
    assert driver.call("reassert") == "in place"

    # Someone slipped an accept into the isolation table: the next check puts the rules back.
    for chain in ("input", "output"):
        net.run(net.endpoint, "nft", f"insert rule inet tether_isolation {chain} accept")
    assert scene.reaches_outside()
    assert driver.call("reassert") == "repaired"
    assert not scene.reaches_outside()
    assert driver.call("reassert") == "in place"

    # Someone flushed the firewall (or the host rebooted).
    net.run(net.endpoint, "nft", "delete table inet tether_isolation")
    assert scene.reaches_outside()
    assert driver.call("reassert") == "restored"
    assert not scene.reaches_outside()

    # The platform moved to another address.
    scene.resolve_to(net.platform_v6)
    assert driver.call("reassert") == "re-applied"
    assert driver.call("status")["platform"] == [str(net.platform_v6)]
    assert greeted(net, net.endpoint, net.platform_v6, scene.port)
    assert not greeted(net, net.endpoint, net.platform_v4, scene.port)

    # It "moved" somewhere that does not answer: the rules that work stay.
    scene.resolve_to(net.outside_v4)
    assert driver.call("reassert") == "kept previous rules"
    assert driver.call("status")["platform"] == [str(net.platform_v6)]
    assert greeted(net, net.endpoint, net.platform_v6, scene.port)

    # Its name no longer resolves (DNS blocked under isolation): the last addresses stay.
    scene.resolve_to()
    assert driver.call("reassert") == "in place"


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy"])
def test_the_iptables_fallback_isolates_and_releases(scene: Scene, variant: str) -> None:
    net = scene.net
    if shutil.which(f"{variant}-restore") is None:
        pytest.skip(f"{variant}-restore is not installed")
    save4, save6 = (
        ("iptables-save", "ip6tables-save")
        if variant == "iptables"
        else ("iptables-legacy-save", "ip6tables-legacy-save")
    )
    iptables = scene.driver(variant)
    try:
        status = iptables.call("isolate", mode="outbound")
        assert status["backend"] == "iptables"
        assert "TETHER-ISO-OUT" in net.run(net.endpoint, save6, "-t", "filter").stdout
        assert not scene.table()
        assert scene.reaches_platform()
        assert not scene.reaches_outside()
        assert not scene.reaches_outside(v6=True)
        assert scene.reached_from_outside()
        # Applying again replaces the chains: still one jump each.
        iptables.call("isolate", mode="full")
        saved = net.run(net.endpoint, save4, "-t", "filter").stdout
        assert saved.count("-A INPUT -j TETHER-ISO-IN") == 1
        assert not scene.reached_from_outside()
        assert scene.reaches_platform()

        # An accept inserted ahead of the isolation jump would let everything out: the next
        # check moves the jump back to the top.
        restore = "iptables-restore" if variant == "iptables" else "iptables-legacy-restore"
        net.run(
            net.endpoint,
            "sh",
            "-c",
            f"printf '*filter\\n-I OUTPUT 1 -j ACCEPT\\n-I INPUT 1 -j ACCEPT\\nCOMMIT\\n' | {restore} --noflush",
        )
        assert scene.reaches_outside(), "the accept rules should have opened the host"
        assert iptables.call("reassert") == "repaired"
        assert not scene.reaches_outside()
        assert scene.reaches_platform()
        saved = net.run(net.endpoint, save4, "-t", "filter").stdout
        assert "-A OUTPUT -j TETHER-ISO-OUT\n-A OUTPUT -j ACCEPT" in saved

        iptables.call("release")
        for tool in (save4, save6):
            assert "TETHER-ISO" not in net.run(net.endpoint, tool, "-t", "filter").stdout
        assert scene.reaches_outside()
        assert scene.reached_from_outside()
    finally:
        iptables.close()


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
def test_the_agents_established_platform_link_survives_isolation(
    scene: Scene, driver: Driver, tracked: bool
) -> None:
    net = scene.net
    if tracked:
        net.run(
            net.endpoint,
            "nft",
            "add table inet pre; add chain inet pre c { type filter hook output priority 0; }; "
            "add rule inet pre c ct state new accept",
        )
    # The agent's WebSocket is open before the analyst isolates the host.
    live = net.connect(net.endpoint, net.platform_v4, scene.port)
    with live:
        assert live.recv(5) == b"hello"
        driver.call("isolate", mode="full")
        live.settimeout(1.0)
        live.sendall(b"job?")
        assert live.recv(4) == b"job?"


def test_the_owner_releases_locally_with_the_agent_command(scene: Scene, driver: Driver) -> None:
    net = scene.net
    identity = {
        "host_id": "host-1",
        "server_url": "https://platform.test:8443",
        "agent_url": f"wss://{PLATFORM_NAME}:{scene.port}/agent",
    }
    driver.call("isolate", mode="full")
    (scene.state_dir / "identity.json").write_text(json.dumps(identity))
    command = [sys.executable, "-m", "tether", "agent", "isolation"]
    shown = net.run(net.endpoint, *command, "status", "--state-dir", str(scene.state_dir))
    assert shown.stdout.splitlines()[0].startswith("Isolated (full mode) since ")
    released = net.run(net.endpoint, *command, "release", "--state-dir", str(scene.state_dir))
    assert released.stdout.splitlines()[0] == "Not isolated."
    assert not scene.table()
    assert scene.reached_from_outside()
    # The agent's next check reads the owner's decision and leaves the host alone.
    assert driver.call("reassert") == "not isolated"
    assert not scene.table()


def enrolled_state(scene: Scene) -> Path:
    """A state directory an agent can start from (identity, CA, certificate), isolated outbound."""
    state = scene.state_dir
    ca = new_ca("test platform CA")
    cert, key, _serial = client_cert(ca, state, "agent")
    (state / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    assert (cert, key) == (state / "agent.pem", state / "agent.key")
    identity = {
        "host_id": "host-1",
        "server_url": f"https://{PLATFORM_NAME}:8443",
        "agent_url": f"wss://{PLATFORM_NAME}:{scene.port}/agent",
    }
    (state / "identity.json").write_text(json.dumps(identity))
    return state


def test_the_agent_reasserts_isolation_at_start_and_while_it_runs(
    scene: Scene, driver: Driver
) -> None:
    net = scene.net
    state = enrolled_state(scene)
    driver.call("isolate", mode="outbound")
    driver.close()
    # A reboot: the firewall forgot the rules, the state directory did not.
    net.run(net.endpoint, "nft", "delete table inet tether_isolation")
    assert scene.reaches_outside()

    argv = [sys.executable, "-m", "tether", "agent", "run", "--state-dir", str(state)]
    env = {**os.environ, "TETHER_ISOLATION_CHECK_SECONDS": "0.2"}
    agent = subprocess.Popen(
        net.exec_argv(net.endpoint, argv),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Generous: a fresh interpreter importing the agent takes seconds on a loaded machine (seen
        # past 5 s with two test workers at load 18); the order of events is asserted below.
        assert wait_for(scene.table, seconds=45), (
            "the agent did not restore the isolation rules at start"
        )
        assert not scene.reaches_outside()
        # Someone flushes the firewall while the agent runs: the next check puts it back.
        net.run(net.endpoint, "nft", "flush ruleset")
        assert wait_for(scene.table, seconds=20), (
            "the running agent did not restore the isolation rules"
        )
        assert not scene.reaches_outside()
    finally:
        agent.terminate()
        _out, log = agent.communicate(timeout=10)
    # Re-asserted before the first attempt to reach the platform (the listener here does not
    # speak TLS, so every attempt fails and is logged).
    lines = log.splitlines()
    started = next(i for i, line in enumerate(lines) if "Isolation at start: restored" in line)
    first_attempt = next(
        (
            i
            for i, line in enumerate(lines)
            if any(w in line for w in ("TLS failure", "lost", "Reconnecting"))
        ),
        len(lines),
    )
    assert started < first_attempt, log


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_guests_routed_through_the_host_lose_the_network_too(tmp_path: Path) -> None:
    netns.skip_unless_available()
    with netns.topology(guest=True) as net:
        scene = Scene(net, tmp_path)
        assert net.guest is not None
        assert net.guest_v4 is not None
        container = scene.driver()
        try:
            for address in (net.outside_v4, net.outside_v6):
                assert greeted(net, net.guest, address, scene.outside_port)
            container.call("isolate", mode="outbound")
            for address in (net.outside_v4, net.outside_v6):
                assert not greeted(net, net.guest, address, scene.outside_port)
            container.call("release")
            assert greeted(net, net.guest, net.outside_v4, scene.outside_port)
        finally:
            container.close()
