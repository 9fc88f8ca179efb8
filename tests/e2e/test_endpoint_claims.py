"""A hostile agent with a real enrolled certificate, speaking to a real platform: what it claims
about deploys and about other hosts' jobs is checked, refused and put on record in summary.

The agents here are WebSocket clients written for the purpose (like the attacker's), not the
shipped agent; the analyst side is the real CLI and API.
"""

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tether.protocol import JobStatus, Welcome
from tether.protocol.isolation import IsolationStatus
from tether.protocol.messages import IsolationReport, JobOutput, parse_platform_message
from tether.protocol.transfer import (
    MIN_WINDOW_BYTES,
    TransferAccept,
    TransferDone,
    TransferRequest,
)

from .conftest import enrolled_agent
from .harness import Agent, Children, Cli, Platform, audit_records
from .test_actions import run
from .test_platform import hello, open_raw

pytestmark = pytest.mark.e2e

Handler = Callable[[ClientConnection, dict[str, Any]], Awaitable[None]]


def records(admin: Cli, action: str) -> list[dict[str, Any]]:
    return [r for r in audit_records(admin) if r["action"] == action]


async def welcomed(platform: Platform, identity: Agent) -> ClientConnection:
    ws = await open_raw(platform, identity.cert, identity.key)
    await ws.send(hello())
    welcome = parse_platform_message(await ws.recv())
    assert isinstance(welcome, Welcome)
    return ws


async def serve(ws: ClientConnection, handle: Handler, until: "asyncio.Future[Any]") -> None:
    """Answer what the platform sends with `handle` until `until` is done."""
    while not until.done():
        try:
            frame = await asyncio.wait_for(ws.recv(), 0.2)
        except TimeoutError:
            continue
        if isinstance(frame, str):
            await handle(ws, json.loads(frame))


async def status(ws: ClientConnection, job_id: str, state: str, **extra: Any) -> None:
    await ws.send(
        JobStatus.model_validate({"job_id": job_id, "state": state, **extra}).model_dump_json()
    )


@pytest.fixture(scope="module")
def liar(
    responding: tuple[Platform, Cli, Children], tmp_path_factory: pytest.TempPathFactory
) -> Agent:
    platform, admin, children = responding
    return enrolled_agent(platform, admin, children, tmp_path_factory.mktemp("liar"), segment="ir")


@pytest.fixture(scope="module")
def other(
    responding: tuple[Platform, Cli, Children], tmp_path_factory: pytest.TempPathFactory
) -> Agent:
    platform, admin, children = responding
    return enrolled_agent(platform, admin, children, tmp_path_factory.mktemp("other"), segment="ir")


NEVER_SENT = (
    "The endpoint reported a deploy that the platform did not send in full and see confirmed "
    "for this job, so it is not counted as deployed."
)


@pytest.mark.parametrize("lie", ["never-opens-the-transfer", "claims-to-hold-every-byte"])
async def test_a_deploy_the_endpoint_only_claims_ends_failed_and_is_not_recorded(
    responding: tuple[Platform, Cli, Children], liar: Agent, tmp_path: Path, lie: str
) -> None:
    platform, admin, _ = responding
    tool = tmp_path / "implant-cleaner.sh"
    tool.write_bytes(os.urandom(200_000))
    size, sha256 = tool.stat().st_size, hashlib.sha256(tool.read_bytes()).hexdigest()
    destination = f"/opt/{lie}/cleaner.sh"
    claim = {"path": destination, "size": size, "sha256": sha256}

    async def answer(ws: ClientConnection, message: dict[str, Any]) -> None:
        if message["type"] == "job" and message["action"] == "files.put":
            job_id = message["job_id"]
            await status(ws, job_id, "delivered")
            await status(ws, job_id, "running")
            if lie == "never-opens-the-transfer":
                await status(ws, job_id, "succeeded", result=claim)
        elif message["type"] == "transfer.open" and lie == "claims-to-hold-every-byte":
            accept = TransferAccept(
                transfer_id=message["transfer_id"], offset=size, window=MIN_WINDOW_BYTES
            )
            await ws.send(accept.model_dump_json())
        elif message["type"] == "transfer.end":
            done = TransferDone(transfer_id=message["transfer_id"], size=size, sha256=sha256)
            await ws.send(done.model_dump_json())
            await status(ws, message_job[0], "succeeded", result=claim)

    message_job: list[str] = []

    async def remember_job(ws: ClientConnection, message: dict[str, Any]) -> None:
        if message["type"] == "job":
            message_job.append(message["job_id"])
        await answer(ws, message)

    async with await welcomed(platform, liar) as ws:
        cli = asyncio.ensure_future(
            asyncio.to_thread(admin.run, "put", liar.host_id, str(tool), destination)
        )
        await asyncio.wait_for(serve(ws, remember_job, cli), 60)
        result = await cli
    expected = (
        NEVER_SENT
        if lie == "never-opens-the-transfer"
        else (
            f"The endpoint confirmed the file when the platform had sent it only 0 of its {size} "
            "bytes, so the deploy is not counted (the file may still be on the endpoint)."
        )
    )
    assert result.returncode == 1
    assert "Deployed" not in result.stdout
    assert result.stderr.strip() == f"tether: The deployment failed: {expected}"
    (job_id,) = message_job
    with admin.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert (job["state"], job["error"]) == ("failed", expected)
    assert not [r for r in records(admin, "file.deploy") if r["details"].get("job") == job_id]
    (outcome,) = [r for r in records(admin, "job.outcome") if job_id in json.dumps(r)]
    assert outcome["details"]["state"] == "failed"


async def test_another_hosts_jobs_grants_and_isolation_are_refused_and_summarized(
    responding: tuple[Platform, Cli, Children], liar: Agent, other: Agent
) -> None:
    platform, admin, _ = responding
    granted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    script_job: list[str] = []

    async def honest(ws: ClientConnection, message: dict[str, Any]) -> None:
        if message["type"] == "job" and message["action"] == "script.run":
            script_job.append(message["job_id"])
            await status(ws, message["job_id"], "delivered")
            await status(ws, message["job_id"], "running")
            request = TransferRequest(
                job_id=message["job_id"], seq=0, direction="get", path="/var/log/auth.log", size=9
            )
            await ws.send(request.model_dump_json())
        elif message["type"] == "transfer.grant" and not granted.done():
            granted.set_result(message)

    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    async with await welcomed(platform, other) as victim, await welcomed(platform, liar) as ws:
        serving = asyncio.create_task(serve(victim, honest, stop))
        with admin.api() as api:
            victim_job = await asyncio.to_thread(
                run, api, other.host_id, "script.run", {"source": "print(1)\n"}
            )
        grant = await asyncio.wait_for(granted, 20)
        assert grant["error"] is None
        assert script_job == [victim_job]
        # The liar names the victim's job in everything it can send, many times over.
        for _ in range(20):
            await ws.send(
                TransferRequest(
                    job_id=victim_job, seq=0, direction="get", path="/etc/shadow", size=9
                ).model_dump_json()
            )
            await status(ws, victim_job, "succeeded", result={"exit_code": 0})
            await ws.send(
                JobOutput(
                    job_id=victim_job, seq=7, stream="stdout", text="forged"
                ).model_dump_json()
            )
        await ws.send(
            IsolationReport(
                status=IsolationStatus(isolated=False), cause="script", job_id=victim_job
            ).model_dump_json()
        )
        answers: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            while len(answers) < 20:
                message = json.loads(await ws.recv())
                if message["type"] == "transfer.grant":
                    answers.append(message)
        stop.set_result(None)
        await serving
    # The liar was never handed the victim's grant.
    assert {a["error"] for a in answers} == {
        f"Job {victim_job} is not a script running on this host."
    }
    assert all(a["transfer_id"] is None for a in answers)
    with admin.api() as api:
        job = api.get(f"/jobs/{victim_job}").json()
        pieces = api.get(f"/jobs/{victim_job}/output").json()["output"]
    assert job["state"] == "running"
    assert pieces == []
    # Sixty-one refusals, one record now; the rest is counted in the summary at the minute's end.
    mine = [
        r for r in records(admin, "endpoint.misbehaviour") if r["target"] == f"host:{liar.host_id}"
    ]
    assert len(mine) == 1
    assert sum(mine[0]["details"]["counts"].values()) == 1
    assert mine[0]["details"]["first"]["named"] == victim_job
