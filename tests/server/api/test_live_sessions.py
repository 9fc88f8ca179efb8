"""The live sessions API: allowed, refused and not found for each route."""

import httpx
from sqlalchemy import update

from tether.protocol import Role
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.platform import Platform
from tether.server.store.tables import segments

from ..support import add_host
from .conftest import login

PASSWORD = "a long enough password"


async def _host(platform: Platform, name: str = "web-1", *, enabled: bool = True) -> str:
    segment = "ir" if enabled else "prod"
    host_id = await add_host(platform.engine, name, segment=segment)
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == segment).values(active_response=enabled)
        )
    return host_id


async def _responder(platform: Platform, client: httpx.AsyncClient, name: str) -> dict[str, str]:
    created = await platform.users.create(name, PASSWORD, {Role.SCRIPT})
    secret = new_secret()
    await platform.users.mfa.enroll_directly(created.id, secret)
    return await login(client, name, PASSWORD, platform=platform, secret=to_base32(secret))


async def test_start_show_list_and_stop(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    host = await _host(platform)
    started = await client.post("/api/v1/sessions", json={"host": "web-1"}, headers=admin)
    assert started.status_code == 201, started.text
    body = started.json()
    assert (body["host_id"], body["hostname"], body["user"], body["open"], body["commands"]) == (
        host,
        "web-1",
        "admin",
        True,
        0,
    )
    assert body["idle_expires_at"] is not None
    session_id = body["id"]

    shown = await client.get(f"/api/v1/sessions/{session_id}", headers=admin)
    assert shown.json()["id"] == session_id
    listed = await client.get("/api/v1/sessions", headers=admin)
    assert [s["id"] for s in listed.json()] == [session_id]

    stopped = await client.delete(f"/api/v1/sessions/{session_id}", headers=admin)
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["open"], stopped.json()["end_reason"]) == (False, "stopped by the user")
    assert stopped.json()["idle_expires_at"] is None
    assert (await client.get("/api/v1/sessions", headers=admin)).json() == []
    everything = await client.get("/api/v1/sessions", params={"all": "true"}, headers=admin)
    assert [s["id"] for s in everything.json()] == [session_id]
    again = await client.delete(f"/api/v1/sessions/{session_id}", headers=admin)
    assert again.status_code == 409
    assert "has ended (stopped by the user)" in again.json()["detail"]


async def test_start_is_refused_where_response_actions_are(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await _host(platform, "db-1", enabled=False)
    off = await client.post("/api/v1/sessions", json={"host": "db-1"}, headers=admin)
    assert off.status_code == 403
    assert off.json()["detail"].startswith("Active Response is off in segment prod")
    ghost = await client.post("/api/v1/sessions", json={"host": "ghost"}, headers=admin)
    assert ghost.status_code == 404
    await platform.users.create("ann", PASSWORD, {Role.ANALYST})
    analyst = await login(client, "ann", PASSWORD)
    await _host(platform)
    refused = await client.post("/api/v1/sessions", json={"host": "web-1"}, headers=analyst)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "You need the active_response permission for this."
    assert (
        await client.get("/api/v1/sessions", params={"all": "true"}, headers=admin)
    ).json() == []


async def test_commands_answer_with_their_job_for_the_owner_only(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    host = await _host(platform)
    session_id = (await client.post("/api/v1/sessions", json={"host": host}, headers=admin)).json()[
        "id"
    ]
    # system.noop is not a response action; the first admin holds hosts.manage, which it needs.
    sent = await client.post(
        f"/api/v1/sessions/{session_id}/commands",
        json={"action": "system.noop", "args": {"echo": "x"}, "cwd": "/tmp"},
        headers=admin,
    )
    assert sent.status_code == 201, sent.text
    job = sent.json()
    assert (job["action"], job["host_id"], job["state"], job["args"]) == (
        "system.noop",
        host,
        "queued",
        {"echo": "x"},
    )
    followed = await client.get(f"/api/v1/jobs/{job['id']}/output", headers=admin)
    assert followed.json()["job"]["id"] == job["id"]
    session = (await client.get(f"/api/v1/sessions/{session_id}", headers=admin)).json()
    assert (session["commands"], session["cwd"]) == (1, "/tmp")

    other = await _responder(platform, client, "rob")
    refused = await client.post(
        f"/api/v1/sessions/{session_id}/commands", json={"action": "system.noop"}, headers=other
    )
    assert refused.status_code == 403
    assert "belongs to admin" in refused.json()["detail"]
    not_theirs = await client.delete(f"/api/v1/sessions/{session_id}", headers=other)
    assert not_theirs.status_code == 403
    # Another responder may read it: they read the audit log anyway.
    assert (await client.get(f"/api/v1/sessions/{session_id}", headers=other)).status_code == 200

    unknown = await client.post(
        f"/api/v1/sessions/{session_id}/commands", json={"action": "files.wipe"}, headers=admin
    )
    assert unknown.status_code == 404
    for method, path in (
        ("GET", "/api/v1/sessions/ghost"),
        ("POST", "/api/v1/sessions/ghost/commands"),
        ("DELETE", "/api/v1/sessions/ghost"),
    ):
        response = await client.request(method, path, json={"action": "system.noop"}, headers=admin)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == "No live session has the id 'ghost'."


async def test_disabling_a_user_ends_their_session_at_once(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    host = await _host(platform)
    rob = await _responder(platform, client, "rob")
    session_id = (await client.post("/api/v1/sessions", json={"host": host}, headers=rob)).json()[
        "id"
    ]
    disabled = await client.post("/api/v1/users/rob/disable", headers=admin)
    assert disabled.status_code == 200, disabled.text
    shown = (await client.get(f"/api/v1/sessions/{session_id}", headers=admin)).json()
    assert (shown["open"], shown["end_reason"]) == (False, "the user's access ended (disabled)")
