"""Several `--role all` nodes of one platform (docs/adr/0050): three real processes on one
PostgreSQL database and one Redis bus, each with a data directory of its own (the others made by
`tether server join` from a copy of the first's), one shared file store directory, and a real
agent on each of the first two (the third holds none, so everything it does crosses).

The job sweeper runs once a minute here, so what crosses within the assertions' seconds crossed
on the bus. The last test kills a node with SIGKILL in the middle of a job: its agent comes back
through a TCP forwarder the test points at the other node, as a load balancer would.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import enrolled_agent, running_agent
from .harness import (
    Agent,
    Children,
    Cli,
    Platform,
    tether_command,
    wait_for,
    wait_online,
)
from .test_actions import finished, output, run
from .test_jobs import submit, wait_state
from .test_platform import EXIT_REFUSED

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


class Forwarder:
    """A TCP forwarder on loopback whose target port the test changes: the agents' "load
    balancer". Each connection goes to the target of the moment it was accepted."""

    def __init__(self, target: int) -> None:
        self.target = target
        # Bytes per second from the agent to the platform (None: as fast as it goes), so a
        # transfer is still in flight when the test kills its node.
        self.upload_rate: float | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if up and self.upload_rate:
                    time.sleep(len(data) / self.upload_rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            with self._lock:
                self._open -= {source, sink}

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for end in list(self._open):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


@dataclass
class Cluster:
    a: Platform
    b: Platform
    # A third node holding no agent: everything it does crosses.
    c: Platform
    admin_a: Cli
    admin_b: Cli
    admin_c: Cli
    children: Children
    on_a: Agent
    on_b: Agent
    forwarder: Forwarder
    shared_store: Path


def _cli_on(admin: Cli, node: Platform, config_dir: Path) -> Cli:
    """The same analyst session, talking to another node (sessions live in the database)."""
    config_dir.mkdir(parents=True)
    profile = admin.profile()
    profile["server"] = node.url
    (config_dir / "profile.json").write_text(json.dumps(profile))
    os.chmod(config_dir / "profile.json", 0o600)
    return Cli(config_dir, admin.env, step_up=admin.step_up)


def _largest(directory: Path) -> int:
    """The size of the largest file in `directory` (0: none), racing its files' removal."""
    sizes = [0]
    for path in directory.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(path.stat().st_size)
    return max(sizes)


def _hosts(api: Any) -> dict[str, dict[str, Any]]:
    return {h["id"]: h for h in api.get("/hosts").json()}


@pytest.fixture(scope="module")
def cluster(
    module_postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    import redis

    root = tmp_path_factory.mktemp("nodes")
    prefix = f"tether-test-{secrets.token_hex(6)}:"
    children = Children(root / "logs")
    shared_store = root / "shared-files"
    try:
        a = Platform(root / "a", children)
        a.env["TETHER_BUS_PREFIX"] = prefix
        a.env["TETHER_JOB_SWEEP_SECONDS"] = "60"
        a.env["TETHER_LAST_SEEN_FLUSH_SECONDS"] = "1"
        a.init_args = [
            *("--database-url", module_postgres_url, "--redis-url", redis_url),
            *("--node-name", "node-a", "--file-store-dir", str(shared_store)),
        ]
        a.init()
        # The operator copies the first node's data directory to the new machine...
        carried = root / "carried"
        shutil.copytree(a.data, carried)
        # ...and makes the other nodes from the copy: one step, nothing over the network.
        b, c = Platform(root / "b", children), Platform(root / "c", children)
        for node, name in ((b, "node-b"), (c, "node-c")):
            node.env = a.env
            joined = subprocess.run(
                [
                    *tether_command(),
                    *("server", "join", "--data", str(node.data), "--from", str(carried)),
                    *("--node-name", name),
                ],
                capture_output=True,
                text=True,
                env=node.env,
                timeout=60,
                check=False,
            )
            assert joined.returncode == 0, joined.stderr
            assert "tether server run --data" in joined.stdout
            assert (node.data / "ca.key").stat().st_mode & 0o077 == 0
        # All three start at once (migrations and start records take turns in the database).
        for node in (a, b, c):
            node.spawn()
        for node in (a, b, c):
            node.wait_healthy(timeout=60)
        admin_a = a.login(root / "admin-a")
        admin_b = _cli_on(admin_a, b, root / "admin-b")
        admin_c = _cli_on(admin_a, c, root / "admin-c")
        admin_a.ok("segment", "create", "ir")
        admin_a.ok("segment", "set", "ir", "--active-response", "on")
        on_a = running_agent(a, admin_a, children, root / "agent-a", segment="ir")
        # The second agent reaches node B through the forwarder, as through a load balancer.
        forwarder = Forwarder(b.agent_port)
        on_b = enrolled_agent(b, admin_b, children, root / "agent-b", segment="ir")
        identity = json.loads((on_b.state_dir / "identity.json").read_text())
        identity["agent_url"] = f"wss://127.0.0.1:{forwarder.port}"
        (on_b.state_dir / "identity.json").write_text(json.dumps(identity))
        on_b.start()
        with admin_a.api() as api:
            wait_online(api, on_b.host_id, timeout=20)
        yield Cluster(
            a, b, c, admin_a, admin_b, admin_c, children, on_a, on_b, forwarder, shared_store
        )
        forwarder.close()
    finally:
        children.kill_all()
        client = redis.Redis.from_url(redis_url)
        with contextlib.suppress(redis.RedisError):
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
        client.close()


def test_each_node_lists_every_host_with_the_node_holding_it(cluster: Cluster) -> None:
    for admin in (cluster.admin_a, cluster.admin_b):
        with admin.api() as api:

            def both_placed() -> bool:
                hosts = _hosts(api)
                placed = (hosts[cluster.on_a.host_id]["node"], hosts[cluster.on_b.host_id]["node"])
                return placed == ("node-a", "node-b")

            wait_for(both_placed, timeout=10, what="both hosts online with their node")
            assert all(h["online"] for h in _hosts(api).values())
    # The CLI's hosts table has a Node column on a platform of several nodes.
    table = cluster.admin_a.ok("hosts")
    assert "Node" in table
    assert "node-a" in table
    assert "node-b" in table


def test_a_job_submitted_on_one_node_runs_on_an_agent_of_the_other(cluster: Cluster) -> None:
    for admin, agent in ((cluster.admin_a, cluster.on_b), (cluster.admin_b, cluster.on_a)):
        with admin.api() as api:
            started = time.monotonic()
            job = submit(api, agent.host_id)
            done = wait_state(api, job["id"], "succeeded", timeout=20)
            took = time.monotonic() - started
            assert done["result"] == {"echo": "e2e"}
            assert took < 5, f"the job took {took:.1f} s: it did not cross on the bus"
            # A round trip crosses too.
            ping = api.post("/hosts/ping", json={"timeout_seconds": 5})
            assert ping.status_code == 200, ping.text
            assert ping.json()["answered"] == 2, ping.json()


def test_a_third_node_fans_out_to_agents_held_by_the_other_two(cluster: Cluster) -> None:
    with cluster.admin_c.api() as api:
        started = time.monotonic()
        response = api.post(
            "/jobs",
            json={
                "action": "system.noop",
                "args": {"echo": "fan-out"},
                "hosts": [cluster.on_a.host_id, cluster.on_b.host_id],
            },
        )
        assert response.status_code == 201, response.text
        ended = [finished(api, job["id"]) for job in response.json()["jobs"]]
        took = time.monotonic() - started
        assert [j["state"] for j in ended] == ["succeeded", "succeeded"]
        assert took < 5, f"the fan-out took {took:.1f} s: it did not cross on the bus"
        placed = {h["id"]: h["node"] for h in api.get("/hosts").json()}
        assert placed == {cluster.on_a.host_id: "node-a", cluster.on_b.host_id: "node-b"}


def test_a_live_session_on_node_a_drives_an_agent_on_node_b(
    cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "seen-across.txt").write_text("x")
    with cluster.admin_a.api() as api:
        session = api.post("/sessions", json={"host": cluster.on_b.host_id})
        assert session.status_code == 201, session.text
        sid = session.json()["id"]
        command = api.post(
            f"/sessions/{sid}/commands",
            json={"action": "files.list", "args": {"path": str(tmp_path)}},
        )
        assert command.status_code == 201, command.text
        followed: dict[str, Any] = {}

        def ended() -> bool:
            answer = api.get(f"/jobs/{command.json()['id']}/output", params={"wait": 5}, timeout=10)
            followed.update(answer.json()["job"])
            return followed["state"] not in {"queued", "delivered", "running"}

        wait_for(ended, timeout=20, interval=0, what="the session command's end")
        assert followed["state"] == "succeeded", followed
        assert {e["name"] for e in followed["result"]["entries"]} == {"seen-across.txt"}
        assert api.delete(f"/sessions/{sid}").status_code == 200


def test_a_file_retrieved_through_node_b_downloads_from_node_a(
    cluster: Cluster, tmp_path: Path
) -> None:
    evidence = tmp_path / "evidence.bin"
    evidence.write_bytes(os.urandom(512 * 1024 + 7))
    # Asked on node B for its own agent: the bytes land in the store node B writes to.
    with cluster.admin_b.api() as api:
        job_id = run(
            api,
            cluster.on_b.host_id,
            "files.get",
            {"path": str(evidence)},
        )
        assert finished(api, job_id)["state"] == "succeeded"
    listed = [
        f
        for f in cluster.admin_a.json("files", "list", "--kind", "retrieved")
        if f.get("job_id") == job_id
    ]
    assert len(listed) == 1, listed
    out = tmp_path / "out"
    out.mkdir()
    # Downloaded through node A, which did not write it: read from the shared store.
    cluster.admin_a.ok("files", "download", listed[0]["id"], "-o", str(out / "copy.bin"))
    assert (out / "copy.bin").read_bytes() == evidence.read_bytes()
    assert any(cluster.shared_store.joinpath("sha256").iterdir())


def test_a_revocation_on_node_a_closes_an_agent_on_node_b_within_a_second(
    cluster: Cluster, tmp_path: Path
) -> None:
    victim = enrolled_agent(cluster.b, cluster.admin_b, cluster.children, tmp_path / "victim")
    identity = json.loads((victim.state_dir / "identity.json").read_text())
    assert identity["agent_url"].endswith(f":{cluster.b.agent_port}")
    victim.start()
    assert victim.proc is not None
    with cluster.admin_a.api() as api:
        wait_for(
            lambda: _hosts(api)[victim.host_id]["node"] == "node-b",
            timeout=15,
            what="the victim on node B",
        )
        revoked = api.post(f"/hosts/{victim.host_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        asked = time.monotonic()
        assert victim.proc.wait(timeout=10) == EXIT_REFUSED
        took = time.monotonic() - asked
        assert took < 1.5, f"the agent on node B was closed {took:.2f} s after the revocation"
        assert "revoked" in victim.proc.output()


def test_a_node_killed_mid_job_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    counter, queued_counter = tmp_path / "counter", tmp_path / "queued-counter"
    evidence = tmp_path / "big-evidence.bin"
    evidence.write_bytes(os.urandom(24 * 1024 * 1024))
    partials = cluster.shared_store / "partial"
    with cluster.admin_b.api() as api_b:
        # A session opened on node B, and a job in flight on node B's agent.
        session = api_b.post("/sessions", json={"host": cluster.on_b.host_id})
        assert session.status_code == 201, session.text
        sid = session.json()["id"]
        in_flight = run(
            api_b,
            cluster.on_b.host_id,
            "script.run",
            {
                "source": "import time\nprint('up', flush=True)\ntime.sleep(15)\n"
                f"open({str(counter)!r}, 'a').write('ran\\n')\n"
            },
        )
        # Started (a loaded machine may take a while to start the interpreter), not finished.
        wait_for(
            lambda: "up" in "".join(p["text"] or "" for p in output(api_b, in_flight)),
            timeout=60,
            what="the script to run",
        )
        # And a retrieval in flight through node B, slowed to about 4 MB/s by the "load
        # balancer" so that it is still under way at the kill.
        cluster.forwarder.upload_rate = 4e6
        retrieval = run(api_b, cluster.on_b.host_id, "files.get", {"path": str(evidence)})
        wait_for(
            lambda: _largest(partials) > 0,
            timeout=15,
            interval=0.02,
            what="the retrieval's first bytes in the shared store",
        )
        assert api_b.get(f"/jobs/{in_flight}").json()["state"] == "running"
    cluster.b.stop(signal.SIGKILL, timeout=10)
    assert not counter.exists(), "the machine was too slow to kill the node mid-job"
    held = _largest(partials)
    assert 0 < held < evidence.stat().st_size, "the retrieval was not in flight at the kill"
    cluster.forwarder.upload_rate = None
    # A live session through node B ends with a plain sentence, not a traceback.
    lost = cluster.admin_b.run("shell", cluster.on_b.host_id, "--command", "ps")
    assert lost.returncode != 0
    assert "Traceback" not in lost.stderr
    assert f"Cannot reach the platform at {cluster.b.url}" in lost.stderr, lost.stderr
    with cluster.admin_a.api() as api:
        # Node B stopped beating: node A stops counting its agent online (stale presence ends).
        wait_online(api, cluster.on_b.host_id, online=False, timeout=20)
        assert _hosts(api)[cluster.on_b.host_id]["node"] is None
        # Queued meanwhile, on node A, for the agent that is away.
        queued = run(
            api,
            cluster.on_b.host_id,
            "script.run",
            {"source": f"open({str(queued_counter)!r}, 'a').write('ran\\n')\n"},
        )
        assert api.get(f"/jobs/{queued}").json()["state"] == "queued"
        # The load balancer now sends the agent to node A.
        cluster.forwarder.target = cluster.a.agent_port
        wait_for(
            lambda: _hosts(api)[cluster.on_b.host_id]["node"] == "node-a",
            timeout=30,
            what="the agent back on node A",
        )
        assert finished(api, in_flight)["state"] == "succeeded"
        assert finished(api, queued)["state"] == "succeeded"
        # The retrieval resumed on node A from the partial node B left in the shared store.
        assert finished(api, retrieval, timeout=60)["state"] == "succeeded", api.get(
            f"/jobs/{retrieval}"
        ).json()
        # The session opened on node B goes on through node A.
        command = api.post(
            f"/sessions/{sid}/commands",
            json={"action": "files.list", "args": {"path": str(tmp_path)}},
        )
        assert command.status_code == 201, command.text
        assert finished(api, command.json()["id"])["state"] == "succeeded"
        time.sleep(1)
    # Each job ran once and ended once.
    assert counter.read_text() == "ran\n"
    assert queued_counter.read_text() == "ran\n"
    listed = [
        f
        for f in cluster.admin_a.json("files", "list", "--kind", "retrieved")
        if f.get("job_id") == retrieval
    ]
    assert len(listed) == 1, listed
    out = tmp_path / "out"
    out.mkdir()
    cluster.admin_a.ok("files", "download", listed[0]["id"], "-o", str(out / "copy.bin"))
    assert (out / "copy.bin").read_bytes() == evidence.read_bytes()
    records = cluster.admin_a.json("audit", "list", "--limit", "1000")
    for job_id in (in_flight, queued, retrieval):
        endings = [r for r in records if r["action"] == "job.outcome" and job_id in r["target"]]
        assert len(endings) == 1, endings
    verify = cluster.admin_a.run("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "BROKEN" not in verify.stdout
