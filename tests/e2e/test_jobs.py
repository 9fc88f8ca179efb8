"""Jobs end to end: a real platform, real agent processes, the REST API the CLI and UI use.

The no-op action runs as a recorded job here, so the lifecycle is tested on its own; the endpoint
actions have their own end-to-end tests.
"""

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import running_agent
from .harness import Agent, Children, Cli, Platform, wait_for, wait_online

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Cli, Children]]:
    root = tmp_path_factory.mktemp("jobs-platform")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        platform.env["TETHER_JOB_SWEEP_SECONDS"] = "1"
        platform.init()
        platform.start()
        admin = platform.login(root / "admin-cli")
        yield platform, admin, children
    finally:
        children.kill_all()


def submit(api: httpx.Client, host_id: str, **extra: Any) -> dict[str, Any]:
    response = api.post(
        "/jobs",
        json={"action": "system.noop", "args": {"echo": "e2e"}, "hosts": [host_id], **extra},
    )
    assert response.status_code == 201, response.text
    (job,) = response.json()["jobs"]
    return dict(job)


def wait_state(api: httpx.Client, job_id: str, state: str, timeout: float = 20) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(api.get(f"/jobs/{job_id}").json())
        return bool(seen["state"] == state)

    wait_for(reached, timeout=timeout, interval=0.05, what=f"job {job_id} {state} (saw {seen})")
    return seen


def stop_agent(api: httpx.Client, agent: Agent) -> None:
    assert agent.proc is not None
    agent.proc.popen.send_signal(signal.SIGTERM)
    agent.proc.wait(20)
    wait_online(api, agent.host_id, online=False, timeout=20)


def test_a_job_runs_on_an_online_agent_and_reports_each_step(
    own: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = own
    agent = running_agent(platform, admin, children, tmp_path / "a")
    with admin.api() as api:
        job = submit(api, agent.host_id)
        done = wait_state(api, job["id"], "succeeded")
        assert done["result"] == {"echo": "e2e"}
        assert done["delivered_at"] is not None
        assert done["finished_at"] >= done["delivered_at"]
        batch = api.get(f"/batches/{job['batch_id']}").json()
        assert batch["counts"] == {"succeeded": 1}


def test_a_pending_job_is_delivered_when_the_host_returns(
    own: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = own
    agent = running_agent(platform, admin, children, tmp_path / "b")
    with admin.api() as api:
        stop_agent(api, agent)
        job = submit(api, agent.host_id)
        time.sleep(1.5)
        assert api.get(f"/jobs/{job['id']}").json()["state"] == "queued"
        pending = api.get("/jobs", params={"state": "queued", "host": agent.host_id}).json()
        assert [j["id"] for j in pending] == [job["id"]]
        agent.start()
        wait_online(api, agent.host_id, timeout=20)
        online_at = time.monotonic()
        wait_state(api, job["id"], "succeeded")
        # Delivered on reconnect, not at the next sweep: well within the second the issue asks.
        assert time.monotonic() - online_at < 1.0


def test_cancel_while_pending_and_expiry(
    own: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = own
    agent = running_agent(platform, admin, children, tmp_path / "c")
    with admin.api() as api:
        stop_agent(api, agent)
        cancelled = submit(api, agent.host_id)
        response = api.post(f"/jobs/{cancelled['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "cancelled"
        again = api.post(f"/jobs/{cancelled['id']}/cancel")
        assert again.status_code == 409
        assert "already ended (cancelled)" in again.json()["detail"]
        expiring = submit(api, agent.host_id, ttl_seconds=1)
        expired = wait_state(api, expiring["id"], "expired", timeout=15)
        assert "did not come online before the job expired" in expired["error"]
        agent.start()
        wait_online(api, agent.host_id, timeout=20)
        time.sleep(1.5)
        assert api.get(f"/jobs/{cancelled['id']}").json()["state"] == "cancelled"
        assert api.get(f"/jobs/{expiring['id']}").json()["state"] == "expired"
    assert agent.proc is not None
    assert cancelled["id"] not in agent.proc.output()


def test_a_job_survives_a_platform_restart(
    own: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = own
    agent = running_agent(platform, admin, children, tmp_path / "d")
    with admin.api() as api:
        stop_agent(api, agent)
        job = submit(api, agent.host_id)
    platform.stop(signal.SIGKILL)
    platform.start()
    agent.start()
    with admin.api() as api:
        wait_online(api, agent.host_id, timeout=30)
        wait_state(api, job["id"], "succeeded")
