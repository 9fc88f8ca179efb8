"""Agent upgrades through the API: who may ask, what is signed and recorded, how a rollout is
staggered, and the ways around the signing that are closed (docs/adr/0051)."""

import asyncio
import io
import tarfile
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import update

from tether.protocol import Role
from tether.protocol.upgrade import UpgradeArgs, signed_statement
from tether.server.errors import Invalid
from tether.server.services.file_transfers import FinishedJob
from tether.server.services.platform import Platform
from tether.server.services.upgrades import bundle_version
from tether.server.store.tables import jobs, segments

from ..support import add_host
from .conftest import PASSWORD, enrolled, login, unused_code
from .test_step_up_and_sessions import make_stale


def _archive(version: str | None = "2.0", executable: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = {}
        if executable:
            members["tether-agent/tether-agent"] = b"#!/bin/sh\n"
        if version is not None:
            members["tether-agent/VERSION"] = version.encode() + b"\n"
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _upload(client: httpx.AsyncClient, headers: dict[str, str], data: bytes) -> str:
    response = await client.post(
        "/api/v1/files", params={"name": "agent.tar.gz"}, content=data, headers=headers
    )
    assert response.status_code == 201, response.text
    sha256: str = response.json()["sha256"]
    return sha256


async def _hosts(platform: Platform, count: int) -> list[str]:
    ids = [await add_host(platform.engine, f"web-{n}", segment="fleet") for n in range(count)]
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "fleet").values(active_response=True)
        )
    return ids


def test_the_archive_names_its_version_or_is_refused(tmp_path: Path) -> None:
    folder = tmp_path
    cases = {
        "good": (_archive("2.0"), None),
        "no-version": (_archive(None), "not an agent bundle archive"),
        "no-executable": (_archive("2.0", executable=False), "not an agent bundle archive"),
        "bad-version": (_archive("../../etc"), "not a valid agent version"),
        "not-tar": (b"MZ\x90\x00", "not an agent bundle archive"),
    }
    for name, (data, refusal) in cases.items():
        path = folder / name
        path.write_bytes(data)
        if refusal is None:
            assert bundle_version(path) == "2.0"
        else:
            with pytest.raises(Invalid, match=refusal):
                bundle_version(path)


async def test_an_upgrade_is_signed_recorded_and_sent_at_most_n_at_a_time(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    host_ids = await _hosts(platform, 3)
    sha256 = await _upload(client, admin, _archive("2.0"))
    response = await client.post(
        "/api/v1/agent-upgrades",
        json={"sha256": sha256, "segment": "fleet", "max_parallel": 2},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    rollout = response.json()
    assert rollout["version"] == "2.0"
    assert sorted(h["host_id"] for h in rollout["hosts"]) == sorted(host_ids)
    sent = [h for h in rollout["hosts"] if h["job_id"]]
    assert len(sent) == 2
    assert rollout["counts"] == {"running": 2, "waiting": 1}

    # The signature the jobs carry verifies with the key agents pin at enrollment.
    key_hex = (await client.get("/api/v1/enroll/upgrade-key")).text
    job = (await client.get(f"/api/v1/jobs/{sent[0]['job_id']}", headers=admin)).json()
    args = UpgradeArgs.model_validate(job["args"])
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
        bytes.fromhex(args.signature), signed_statement(args.version, args.sha256, args.size)
    )
    assert (args.sha256, args.version) == (sha256, "2.0")

    # One host's job ends rolled back: its outcome is recorded and the third host's turn comes.
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.id == sent[0]["job_id"]).values(state="failed")
        )
    await platform.upgrades.job_finished(
        FinishedJob(
            job_id=sent[0]["job_id"],
            host_id=sent[0]["host_id"],
            action="agent.upgrade",
            state="failed",
            result=None,
            error="Rolled back to 1.0: version 2.0 exited with status 1 before it connected.",
            created_by="admin",
            args=job["args"],
        )
    )
    for _ in range(50):
        now = (await client.get(f"/api/v1/agent-upgrades/{rollout['id']}", headers=admin)).json()
        if now["counts"].get("waiting", 0) == 0:
            break
        await asyncio.sleep(0.05)
    assert now["counts"] == {"rolled back": 1, "running": 2}

    listed = (await client.get("/api/v1/audit", params={"limit": 200}, headers=admin)).json()
    requested = [r for r in listed if r["action"] == "agent.upgrade.request"]
    assert len(requested) == 1
    assert requested[0]["details"]["sha256"] == sha256
    assert requested[0]["details"]["version"] == "2.0"
    assert requested[0]["details"]["upgrade_key"] == key_hex
    ended = [r for r in listed if r["action"] == "agent.upgrade.end"]
    assert [(e["details"]["outcome"], e["outcome"]) for e in ended] == [("rolled back", "failure")]


async def test_a_submitted_job_cannot_bypass_the_signing(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """The attacker with an admin's session sends agent.upgrade with a signature of their own."""
    (host,) = await _hosts(platform, 1)
    args = {"version": "6.6.6", "sha256": "a" * 64, "size": 1, "signature": "b" * 128}
    response = await client.post(
        "/api/v1/jobs",
        json={"action": "agent.upgrade", "args": args, "hosts": [host]},
        headers=admin,
    )
    assert response.status_code == 422, response.text
    assert "tether agent upgrade" in response.json()["detail"]


@pytest.mark.parametrize(
    ("roles", "refusal"),
    [
        ({Role.ADMIN}, "You need an Active Response tier"),
        ({Role.SCRIPT}, "hosts.manage"),
        ({Role.ADMIN, Role.RESPOND}, "has the respond tier; an agent upgrade needs script"),
    ],
    ids=["admin-without-tier", "script-tier-without-admin", "admin-with-respond"],
)
async def test_only_an_admin_with_the_script_tier_may_upgrade(
    platform: Platform,
    client: httpx.AsyncClient,
    admin: dict[str, str],
    roles: set[Role],
    refusal: str,
) -> None:
    await _hosts(platform, 1)
    sha256 = await _upload(client, admin, _archive("2.0"))
    secret = await enrolled(platform, "mallory", roles)
    mallory = await login(client, "mallory", PASSWORD, platform=platform, secret=secret)
    response = await client.post(
        "/api/v1/agent-upgrades", json={"sha256": sha256, "segment": "fleet"}, headers=mallory
    )
    assert response.status_code == 403, response.text
    assert refusal in response.json()["detail"]
    listed = (await client.get("/api/v1/audit", params={"limit": 200}, headers=admin)).json()
    assert not [r for r in listed if r["action"] == "agent.upgrade.request"]


async def test_a_file_that_is_not_a_bundle_is_refused_before_anything_is_signed(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await _hosts(platform, 1)
    sha256 = await _upload(client, admin, b"#!/bin/sh\nrm -rf /\n")
    response = await client.post(
        "/api/v1/agent-upgrades", json={"sha256": sha256, "segment": "fleet"}, headers=admin
    )
    assert response.status_code == 422
    assert "not an agent bundle archive" in response.json()["detail"]
    assert not platform.settings.upgrade_key.exists()


async def test_a_host_the_jobs_refuse_ends_not_sent_and_its_slot_goes_to_the_next(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    (fleet_host,) = await _hosts(platform, 1)
    # Active Response is off in "default": the job service refuses that host.
    closed = await add_host(platform.engine, "closed-1", segment="default")
    sha256 = await _upload(client, admin, _archive("2.0"))
    response = await client.post(
        "/api/v1/agent-upgrades",
        json={"sha256": sha256, "hosts": [closed, fleet_host], "max_parallel": 1},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    by_host = {h["host_id"]: h for h in response.json()["hosts"]}
    assert by_host[closed]["outcome"] == "not sent"
    assert "Active Response" in by_host[closed]["error"]
    assert by_host[fleet_host]["job_id"] is not None
    assert by_host[fleet_host]["outcome"] is None


async def test_a_stale_session_needs_a_fresh_code_to_upgrade(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str], admin_secret: str
) -> None:
    await _hosts(platform, 1)
    sha256 = await _upload(client, admin, _archive("2.0"))
    await make_stale(platform, "admin")
    body = {"sha256": sha256, "segment": "fleet"}
    refused = await client.post("/api/v1/agent-upgrades", json=body, headers=admin)
    assert refused.status_code == 403
    assert refused.headers["x-tether-step-up"] == "required"
    code = await unused_code(platform, "admin", admin_secret)
    accepted = await client.post(
        "/api/v1/agent-upgrades", json=body, headers={**admin, "X-Tether-Code": code}
    )
    assert accepted.status_code == 201, accepted.text
