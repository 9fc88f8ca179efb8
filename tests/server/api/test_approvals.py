"""Four-eyes approval through the API: the segment setting, a request, and who may decide it."""

import httpx
from sqlalchemy import update

from tether.protocol import Role
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.platform import Platform
from tether.server.store.tables import sessions

from .conftest import login
from .test_live_sessions import _host

PASSWORD = "a long enough password"


async def _person(
    platform: Platform, client: httpx.AsyncClient, name: str, role: Role
) -> tuple[dict[str, str], str]:
    created = await platform.users.create(name, PASSWORD, {role})
    secret = new_secret()
    await platform.users.mfa.enroll_directly(created.id, secret)
    text = to_base32(secret)
    return await login(client, name, PASSWORD, platform=platform, secret=text), text


async def test_a_request_waits_until_a_second_person_approves_it(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await _host(platform)
    changed = await client.patch(
        "/api/v1/segments/ir",
        json={"approval": "respond", "approval_timeout_seconds": 4 * 3600},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["approval"], changed.json()["approval_timeout_seconds"]) == (
        "respond",
        14400,
    )
    rita, rita_secret = await _person(platform, client, "rita", Role.RESPOND)
    colin, _ = await _person(platform, client, "colin", Role.COLLECT)
    ron, _ = await _person(platform, client, "ron", Role.RESPOND)

    asked = await client.post(
        "/api/v1/jobs",
        json={"action": "processes.kill", "args": {"pid": 42}, "hosts": ["web-1"]},
        headers=rita,
    )
    assert asked.status_code == 201, asked.text
    (job,) = asked.json()["jobs"]
    assert job["state"] == "awaiting_approval"
    assert asked.json()["notice"] == (
        "Segment ir needs a second person's approval for respond and script actions; "
        f"job {job['id']} is awaiting approval."
    )
    listed = (await client.get("/api/v1/approvals", headers=ron)).json()
    assert [(a["requested_by"], a["first_job"]) for a in listed] == [("rita", job["id"])]

    # Rita's second session is still rita; colin's tier is too low.
    again = await login(client, "rita", PASSWORD, platform=platform, secret=rita_secret)
    refused = await client.post(f"/api/v1/jobs/{job['id']}/approve", json={}, headers=again)
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        f"rita requested job {job['id']}; a different person must approve it."
    )
    refused = await client.post(f"/api/v1/jobs/{job['id']}/approve", json={}, headers=colin)
    assert refused.json()["detail"] == (
        f"colin has the collect tier; approving or rejecting job {job['id']} needs respond."
    )
    bad = await client.post(
        f"/api/v1/jobs/{job['id']}/approve", json={"reason": "x" * 501}, headers=ron
    )
    assert bad.status_code == 422

    approved = await client.post(
        f"/api/v1/jobs/{job['id']}/approve", json={"reason": "confirmed"}, headers=ron
    )
    assert approved.status_code == 200, approved.text
    shown = (await client.get(f"/api/v1/jobs/{job['id']}", headers=rita)).json()
    assert shown["state"] == "queued"
    assert (shown["approval"]["decided_by"], shown["approval"]["reason"]) == ("ron", "confirmed")
    late = await client.post(
        f"/api/v1/jobs/{job['id']}/reject", json={"reason": "no"}, headers=admin
    )
    assert late.status_code == 409
    assert late.json()["detail"] == f"The request for job {job['id']} was already approved by ron."


async def test_asking_fewer_actions_to_wait_needs_a_fresh_code(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await _host(platform)
    assert (
        await client.patch("/api/v1/segments/ir", json={"approval": "respond"}, headers=admin)
    ).status_code == 200
    # Stricter needs no code; weaker does once the login's code is older than the window.
    async with platform.engine.begin() as conn:
        await conn.execute(update(sessions).values(mfa_verified_at=None))
    # Written behind the platform's back: forget what it cached (docs/adr/0053).
    platform.users.cache.forget_all()
    weaker = await client.patch("/api/v1/segments/ir", json={"approval": "off"}, headers=admin)
    assert weaker.status_code == 403, weaker.text
    assert "needs a fresh second-factor code" in weaker.text
    stricter = await client.patch(
        "/api/v1/segments/ir", json={"approval_timeout_seconds": 3600}, headers=admin
    )
    assert stricter.status_code == 200, stricter.text
    listed = {
        s["name"]: s["approval"]
        for s in (await client.get("/api/v1/segments", headers=admin)).json()
    }
    assert listed["ir"] == "respond"
