"""Storms under control (docs/adr/0049), with a real platform process and real agents: agents
that find a live address, a bounded stop with a comeback, and admission control shedding real
connections while an agent still comes online."""

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import enrolled_agent
from .harness import Agent, Children, Cli, Platform, free_port, wait_for, wait_online

pytestmark = pytest.mark.e2e


class Storm:
    def __init__(self, platform: Platform, admin: Cli, dead: list[str]) -> None:
        self.platform = platform
        self.admin = admin
        self.dead = dead

    @property
    def live(self) -> str:
        return f"127.0.0.1:{self.platform.agent_port}"


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storm]:
    """A platform of the module's own (it is stopped and restarted), whose agent address list
    names four ports nobody listens on and then its own agent port."""
    root = tmp_path_factory.mktemp("storm-platform")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        dead = [f"127.0.0.1:{free_port()}" for _ in range(4)]
        for address in [*dead, f"127.0.0.1:{platform.agent_port}"]:
            platform.init_args += ["--agent-address", address]
        platform.init()
        platform.start()
        yield Storm(platform, platform.login(root / "admin-cli"), dead)
    finally:
        children.kill_all()


def stored_addresses(agent: Agent) -> list[str]:
    data: list[str] = json.loads((agent.state_dir / "platform-addresses.json").read_text())
    return data


def first_attempts(agent: Agent) -> list[str]:
    """The addresses the agent tried before its first welcome, in order."""
    assert agent.proc is not None
    tried = []
    for line in agent.proc.output().splitlines():
        if "Connected to wss://" in line:
            tried.append(line.split("Connected to ")[1].split()[0])
            return tried
        found = re.search(r"Connection to (wss://\S+) lost", line)
        if found:
            tried.append(found.group(1))
    return tried


def test_an_agent_comes_online_through_the_live_address_after_dead_ones(
    storm: Storm, children: Children, tmp_path: Path
) -> None:
    platform, admin = storm.platform, storm.admin
    agent = enrolled_agent(platform, admin, children, tmp_path / "agent")
    # Enrollment handed over the whole list, and the agent keeps it in its state directory.
    listed = [f"wss://{a}" for a in [*storm.dead, storm.live]]
    assert stored_addresses(agent) == listed
    # Each run tries the list in an order of its own: run until one began with a dead address
    # (four of five do), so the refusal and the move to the next address are really exercised.
    for _ in range(6):
        agent.start()
        with admin.api() as api:
            took = wait_online(api, agent.host_id, timeout=30)
        tried = first_attempts(agent)
        assert tried[-1] == f"wss://{storm.live}", tried
        assert agent.proc is not None
        if len(tried) > 1:
            break
        agent.proc.popen.terminate()
        agent.proc.wait(10)
        with admin.api() as api:
            wait_online(api, agent.host_id, online=False, timeout=30)
    assert len(tried) > 1, "no run tried a dead address first"
    assert set(tried[:-1]) <= {f"wss://{a}" for a in storm.dead}
    # Refused addresses are skipped after a short jitter, not a growing backoff.
    assert took < 4 + len(tried), (took, tried)
    assert agent.proc is not None
    assert "refused" in agent.proc.output().lower()


def test_stop_is_bounded_and_agents_come_back_with_the_new_list(
    storm: Storm, children: Children, tmp_path: Path
) -> None:
    platform, admin = storm.platform, storm.admin
    agent = enrolled_agent(platform, admin, children, tmp_path / "agent")
    agent.start()
    with admin.api() as api:
        wait_online(api, agent.host_id, timeout=30)
    # An added node reaches agents enrolled before it: the list is in every welcome.
    added = f"127.0.0.1:{free_port()}"
    changed = admin.json("settings", "agent-addresses", storm.live, added)
    assert changed["addresses"] == [storm.live, added]
    started = time.monotonic()
    assert platform.stop(timeout=20) == 0
    stopped_in = time.monotonic() - started
    # 2 s for the agents at most, plus the process's own start of shutdown and exit.
    assert stopped_in < 6, f"the platform took {stopped_in:.1f} s to stop"
    assert "Agent port closed in" in platform.log()
    platform.start()
    with admin.api() as api:
        # "Going away": back at a random moment of 10 s, plus a retry of 1-5 s if early.
        took = wait_online(api, agent.host_id, timeout=30)
    assert took < 20
    assert agent.proc is not None
    output = agent.proc.output()
    assert "(going away)" in output, output[-2000:]
    wait_for(
        lambda: stored_addresses(agent) == [f"wss://{storm.live}", f"wss://{added}"],
        timeout=10,
        what="the new address list in the agent's state",
    )
    # Audited as a settings change, with the list before it.
    records = [r for r in admin.json("audit", "list") if r["action"] == "settings.change"]
    assert records[-1]["details"]["agent_addresses"] == [storm.live, added]
    admin.ok("settings", "agent-addresses", *storm.dead, storm.live)


def test_a_bad_agent_address_is_refused_in_one_sentence(storm: Storm) -> None:
    result = storm.admin.run("settings", "agent-addresses", "wss://evil.example/x")
    assert result.returncode != 0
    assert "is not an agent address; write HOST:PORT" in result.stderr


def shed_total(platform: Platform) -> int:
    text = httpx.get(f"{platform.url}/metrics", verify=platform.ssl_context()).text
    found = re.search(r"^tether_agent_connections_shed_total (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return int(float(found.group(1)))


def test_admission_control_sheds_real_connections_and_the_agent_still_comes_online(
    storm: Storm, children: Children, tmp_path: Path
) -> None:
    platform, admin = storm.platform, storm.admin
    agent = enrolled_agent(platform, admin, children, tmp_path / "agent")
    # Only the live address, so every attempt meets the limit.
    (agent.state_dir / "platform-addresses.json").write_text(json.dumps([f"wss://{storm.live}"]))
    platform.env["TETHER_AGENT_HANDSHAKE_LIMIT"] = "1"
    try:
        assert platform.stop() == 0
        platform.start()
        before = shed_total(platform)
        # A client that opens TCP and never starts TLS holds the one place for up to 15 s.
        holder = socket.create_connection(("127.0.0.1", platform.agent_port))
        time.sleep(0.3)
        shed = []
        for _ in range(3):
            late = socket.create_connection(("127.0.0.1", platform.agent_port))
            late.settimeout(5)
            try:
                shed.append(late.recv(1) == b"")  # closed unread, before any TLS byte
            except ConnectionResetError:
                shed.append(True)
            late.close()
        assert shed == [True, True, True]
        assert shed_total(platform) == before + 3
        agent.start()
        # The agent is shed too while the holder stays, and keeps knocking without backing off.
        wait_for(
            lambda: agent.proc is not None and "is busy" in agent.proc.output(),
            timeout=15,
            what="the agent shed as busy",
        )
        holder.close()
        with admin.api() as api:
            took = wait_online(api, agent.host_id, timeout=20)
        assert took < 10
        assert shed_total(platform) >= before + 4
    finally:
        del platform.env["TETHER_AGENT_HANDSHAKE_LIMIT"]
        assert platform.stop() == 0
        platform.start()
