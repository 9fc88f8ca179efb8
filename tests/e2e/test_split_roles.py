"""A split platform (docs/adr/0044): `--role api` and `--role gateway` as two real processes on
one PostgreSQL database and one Redis bus, with a real agent on the gateway.

The job sweeper, which would also find the job, runs only once a minute here: what crosses
within the assertions' seconds crossed on the bus.
"""

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import running_agent
from .harness import Children, Platform, free_port, tether_command, wait_for, wait_online
from .test_jobs import submit, wait_state
from .test_platform import EXIT_REFUSED

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_the_api_process_reaches_an_agent_held_by_the_gateway_process(
    fresh_postgres_url: str, redis_url: str, bus_prefix: str, tmp_path: Path
) -> None:
    children = Children(tmp_path / "logs")
    try:
        platform = Platform(tmp_path, children)
        platform.env["TETHER_BUS_PREFIX"] = bus_prefix
        platform.env["TETHER_JOB_SWEEP_SECONDS"] = "60"
        platform.init_args = ["--database-url", fresh_postgres_url, "--redis-url", redis_url]
        platform.init()
        platform.run_args = ["--role", "api"]
        api_proc = platform.start()
        gateway = children.spawn(
            "gateway",
            [
                *tether_command(),
                "server",
                "run",
                "--data",
                str(platform.data),
                "--role",
                "gateway",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--agent-listen",
                f"127.0.0.1:{platform.agent_port}",
            ],
            platform.env,
        )

        def gateway_up() -> bool:
            assert gateway.alive(), f"the gateway exited early:\n{gateway.output()}"
            return "Role gateway: agent port" in gateway.output()

        wait_for(gateway_up, timeout=30, what="the gateway's agent port")
        admin = platform.login(tmp_path / "admin-cli")
        admin.ok("segment", "create", "ir")
        admin.ok("segment", "set", "ir", "--active-response", "on")
        # Enrolled through the api process, connected to the gateway, seen online by the api.
        agent = running_agent(platform, admin, children, tmp_path / "agent", segment="ir")
        assert agent.proc is not None

        with admin.api() as api:
            started = time.monotonic()
            job = submit(api, agent.host_id)
            done = wait_state(api, job["id"], "succeeded", timeout=20)
            took = time.monotonic() - started
            assert done["result"] == {"echo": "e2e"}
            assert took < 5, f"the job took {took:.1f} s: it did not cross on the bus"

            # A retrieval and a deploy: streamed by the gateway, stored in and served from the
            # shared file store by the api.
            evidence = tmp_path / "evidence.bin"
            evidence.write_bytes(os.urandom(1024 * 1024 + 3))
            out = tmp_path / "out"
            out.mkdir()
            got = admin.json("get", agent.host_id, str(evidence), "-o", str(out))
            assert Path(got["saved"]).read_bytes() == evidence.read_bytes()
            destination = tmp_path / "deployed.bin"
            put = admin.json("put", agent.host_id, str(evidence), str(destination))
            assert put["job"]["state"] == "succeeded"
            assert destination.read_bytes() == evidence.read_bytes()

            # A live session's command, followed by long poll on the api until it ends.
            session = api.post("/sessions", json={"host": agent.host_id})
            assert session.status_code == 201, session.text
            sid = session.json()["id"]
            command = api.post(
                f"/sessions/{sid}/commands",
                json={"action": "files.list", "args": {"path": str(tmp_path)}},
            )
            assert command.status_code == 201, command.text
            followed: dict[str, Any] = {}

            def ended() -> bool:
                answer = api.get(
                    f"/jobs/{command.json()['id']}/output", params={"wait": 5}, timeout=10
                )
                followed.update(answer.json()["job"])
                return followed["state"] not in {"queued", "delivered", "running"}

            wait_for(ended, timeout=20, interval=0, what="the session command's end")
            assert followed["state"] == "succeeded", followed
            names = {e["name"] for e in followed["result"]["entries"]}
            assert {"evidence.bin", "deployed.bin"} <= names
            assert api.delete(f"/sessions/{sid}").status_code == 200

            # A round trip crosses too: the api asks, the gateway holding the host answers.
            ping = api.post("/hosts/ping", json={"hosts": [agent.host_id], "timeout_seconds": 5})
            assert ping.status_code == 200, ping.text
            assert ping.json()["answered"] == 1, ping.json()
            assert ping.json()["round_trip_ms_p50"] < 5000

            # Revoked on the api process, closed by the gateway within a second or two.
            revoked = api.post(f"/hosts/{agent.host_id}/revoke")
            assert revoked.status_code == 200, revoked.text
            returned = time.monotonic()
            assert agent.proc.wait(timeout=10) == EXIT_REFUSED
            assert time.monotonic() - returned < 3
            assert "revoked" in agent.proc.output()
            wait_online(api, agent.host_id, online=False, timeout=10)

        # Both processes appended to the one chain, and it verifies with the one checkpoint.
        verify = admin.run("audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "BROKEN" not in verify.stdout
        actions = {r["action"] for r in admin.json("audit", "list", "--limit", "1000")}
        assert {"job.submit", "host.revoke", "file.retrieve", "file.deploy"} <= actions
        assert any(a.startswith("job.") and a != "job.submit" for a in actions), actions

        # A clean stop of each role.
        gateway.popen.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0, gateway.output()
        api_proc.popen.send_signal(signal.SIGTERM)
        assert api_proc.wait(20) == 0, api_proc.output()
    finally:
        children.kill_all()
