"""Over HTTP: sensitive changes from a stale session need a fresh code in X-Tether-Code (403 with
the sentence and the X-Tether-Step-Up header otherwise); enrollment codes issued and used; sessions
listed and ended."""

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from tether.protocol import Role
from tether.server.services.platform import Platform
from tether.server.services.step_up import FRESH_CODE_NEEDED
from tether.server.services.users import CODE_REFUSED, enroll_first
from tether.server.store.tables import sessions, users

from .conftest import PASSWORD, enrolled, login, unused_code


async def make_stale(platform: Platform, username: str) -> None:
    """Age every session of `username`'s last second-factor check past the step-up window."""
    old = platform.users.now() - timedelta(minutes=6)
    async with platform.engine.begin() as conn:
        user_id = (
            await conn.execute(select(users.c.id).where(users.c.username == username))
        ).scalar_one()
        await conn.execute(
            update(sessions).where(sessions.c.user_id == user_id).values(mfa_verified_at=old)
        )
    # Written behind the platform's back: what it cached of the sessions is forgotten, as the
    # session cache's TTL would do a moment later (docs/adr/0053).
    platform.users.cache.forget_user(user_id)


SENSITIVE = [
    ("PUT", "/api/v1/users/bob/roles/script", None),
    ("DELETE", "/api/v1/users/bob/roles/analyst", None),
    ("POST", "/api/v1/users/bob/enrollment-code", None),
    ("POST", "/api/v1/users", {"username": "eve", "password": PASSWORD, "roles": []}),
    ("PUT", "/api/v1/users/bob/external", {"external": True, "organisation": "Acme"}),
    ("PATCH", "/api/v1/settings", {"mfa_required_for_everyone": True}),
    ("POST", "/api/v1/segments", {"name": "lab", "active_response": True}),
    ("PATCH", "/api/v1/segments/default", {"active_response": True}),
    ("POST", "/api/v1/enrollment-tokens", {"segment": "default"}),
]


@pytest.mark.parametrize(("method", "path", "body"), SENSITIVE)
async def test_a_stale_session_needs_a_fresh_code_for_sensitive_changes(
    client: httpx.AsyncClient,
    platform: Platform,
    admin: dict[str, str],
    admin_secret: str,
    method: str,
    path: str,
    body: object,
) -> None:
    await platform.users.create("bob", PASSWORD, {Role.ANALYST})
    await make_stale(platform, "admin")
    refused = await client.request(method, path, json=body, headers=admin)
    assert refused.status_code == 403
    assert refused.json() == {"detail": FRESH_CODE_NEEDED}
    assert refused.headers["x-tether-step-up"] == "required"
    wrong = await client.request(
        method, path, json=body, headers={**admin, "X-Tether-Code": "000000"}
    )
    if wrong.status_code == 403:
        # (000000 could be the real code once in a million runs.)
        assert wrong.json() == {"detail": CODE_REFUSED}
    code = await unused_code(platform, "admin", admin_secret)
    accepted = await client.request(
        method, path, json=body, headers={**admin, "X-Tether-Code": code}
    )
    assert accepted.status_code in (200, 201), accepted.text
    records = [
        (r.outcome, (r.to_json()["details"] or {}).get("reason"))
        async for r in platform.audit.iter_records()
        if r.action == "auth.step_up"
    ]
    assert records[0] == ("failure", "no fresh code")
    assert records[-1] == ("success", None)


async def test_reading_and_harmless_changes_need_no_step_up(
    client: httpx.AsyncClient, platform: Platform, admin: dict[str, str]
) -> None:
    await make_stale(platform, "admin")
    assert (await client.get("/api/v1/users", headers=admin)).status_code == 200
    off = await client.patch(
        "/api/v1/segments/default", json={"active_response": False}, headers=admin
    )
    assert off.status_code == 200


async def test_an_enrollment_code_from_an_admin_lets_a_new_admin_enroll(
    client: httpx.AsyncClient, platform: Platform, admin: dict[str, str]
) -> None:
    created = await client.post(
        "/api/v1/users",
        json={"username": "ada", "password": PASSWORD, "roles": ["admin"]},
        headers=admin,
    )
    assert created.status_code == 201
    answer = (
        await client.post("/api/v1/auth/login", json={"username": "ada", "password": PASSWORD})
    ).json()
    assert answer["stage"] == "enroll"
    assert answer["message"] == enroll_first("ada")
    ada = {"authorization": f"Bearer {answer['token']}"}
    for method, path in [("GET", "/api/v1/users"), ("PUT", "/api/v1/users/ada/roles/script")]:
        refused = await client.request(method, path, headers=ada)
        assert refused.status_code == 403
        assert refused.json() == {"detail": enroll_first("ada")}
    issued = await client.post(
        "/api/v1/users/ada/enrollment-code", json={"hours": 2}, headers=admin
    )
    assert issued.status_code == 200
    body = issued.json()
    assert body["username"] == "ada"
    assert len(body["code"]) == 23
    # Never for yourself, and not for an account that has a factor (a reset does that).
    own = await client.post("/api/v1/users/admin/enrollment-code", headers=admin)
    assert own.status_code == 403
    await enrolled(platform, "has-one", {Role.ADMIN})
    has_one = await client.post("/api/v1/users/has-one/enrollment-code", headers=admin)
    assert has_one.status_code == 409
    assert has_one.json() == {
        "detail": "'has-one' already has a second factor; reset it with "
        "'tether user reset-mfa has-one' to issue a new enrollment code."
    }
    started = await client.post(
        "/api/v1/auth/mfa/enroll", json={"enrollment_code": body["code"]}, headers=ada
    )
    assert started.status_code == 200, started.text


async def test_sessions_are_listed_and_the_others_ended(
    client: httpx.AsyncClient, platform: Platform, admin: dict[str, str]
) -> None:
    secret = await enrolled(platform, "ops", {Role.ADMIN})
    first = await login(client, "ops", PASSWORD, platform=platform, secret=secret)
    second = await login(client, "ops", PASSWORD, platform=platform, secret=secret)
    listed = (await client.get("/api/v1/auth/sessions", headers=second)).json()
    assert len(listed) == 2
    current = [s for s in listed if s["current"]]
    other = [s for s in listed if not s["current"]]
    assert len(current) == 1
    assert current[0]["mfa_verified"] is True
    itself = await client.delete(f"/api/v1/auth/sessions/{current[0]['id']}", headers=second)
    assert itself.status_code == 422
    assert itself.json() == {"detail": "That is the session you are using; log out to end it."}
    ended = await client.delete(f"/api/v1/auth/sessions/{other[0]['id']}", headers=second)
    assert ended.status_code == 204
    assert (await client.get("/api/v1/auth/whoami", headers=first)).status_code == 401
    # An admin sees and ends another user's; that user cannot see the admin's.
    theirs = (await client.get("/api/v1/users/ops/sessions", headers=admin)).json()
    assert [s["current"] for s in theirs] == [False]
    gone = await client.delete(f"/api/v1/users/ops/sessions/{theirs[0]['id']}", headers=admin)
    assert gone.status_code == 204
    assert (await client.get("/api/v1/auth/whoami", headers=second)).status_code == 401
    analyst = await platform.users.create("ann", PASSWORD, {Role.ANALYST})
    assert analyst.username == "ann"
    ann = await login(client, "ann", PASSWORD)
    nosy = await client.get("/api/v1/users/admin/sessions", headers=ann)
    assert nosy.status_code == 403
    missing = await client.delete("/api/v1/auth/sessions/0123456789abcdef", headers=ann)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "ann has no open session 0123456789abcdef."}
    ends = [r.target async for r in platform.audit.iter_records() if r.action == "session.end"]
    assert ends == ["ops", "ops"]
