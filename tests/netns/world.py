"""A real platform in the root namespace and a real agent in an endpoint namespace, for the
end-to-end isolation tests (the CLI's and the web UI's)."""

import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from tests import netns
from tests.e2e.harness import Children, Cli, Platform, tether_command, wait_for, wait_online

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
