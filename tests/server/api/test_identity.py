"""The identity routes over HTTP: enrollment-limited sessions, MFA enrollment, the team API,
settings, audit refusals recorded, and throttled logins answered with 429 and Retry-After."""

from datetime import timedelta

import httpx
from sqlalchemy import select

from tether.protocol import Role
from tether.server.auth.totp import from_base32, totp
from tether.server.services.mfa import load_sealer
from tether.server.services.platform import Platform, session_policy
from tether.server.services.users import Users, enroll_first
from tether.server.store.tables import users

from ..support import FakeClock
from .conftest import enrolled, login

PASSWORD = "a long enough password"


async def test_responder_enrolls_at_first_login_and_can_do_nothing_else_before(
    client: httpx.AsyncClient, platform: Platform, admin: dict[str, str]
) -> None:
    created = await client.post(
        "/api/v1/users",
        json={"username": "rita", "password": PASSWORD, "roles": ["script"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert created.json()["mfa_enabled"] is False
    answer = (
        await client.post("/api/v1/auth/login", json={"username": "rita", "password": PASSWORD})
    ).json()
    assert answer["stage"] == "enroll"
    rita = {"authorization": f"Bearer {answer['token']}"}
    for method, path in [("GET", "/api/v1/hosts"), ("GET", "/api/v1/audit")]:
        refused = await client.request(method, path, headers=rita)
        assert refused.status_code == 403
        assert refused.json() == {"detail": enroll_first("rita")}
    me = (await client.get("/api/v1/auth/whoami", headers=rita)).json()
    assert (me["enrollment_only"], me["mfa_enabled"]) == (True, False)
    issued = await client.post("/api/v1/users/rita/enrollment-code", headers=admin)
    assert issued.status_code == 200, issued.text
    started = (
        await client.post(
            "/api/v1/auth/mfa/enroll",
            json={"enrollment_code": issued.json()["code"]},
            headers=rita,
        )
    ).json()
    assert started["qr_svg"].startswith("<svg")
    assert started["uri"].startswith("otpauth://totp/Tether:rita?secret=")
    code = totp(from_base32(started["secret"]), platform.users.mfa._clock().timestamp())
    confirmed = await client.post("/api/v1/auth/mfa/confirm", json={"code": code}, headers=rita)
    assert confirmed.status_code == 200, confirmed.text
    assert len(confirmed.json()["recovery_codes"]) == 10
    # The same session may now read the Session History.
    assert (await client.get("/api/v1/audit", headers=rita)).status_code == 200
    # The code just used cannot log in again.
    pending = (
        await client.post("/api/v1/auth/login", json={"username": "rita", "password": PASSWORD})
    ).json()
    assert pending["stage"] == "second_factor"
    replay = await client.post(
        "/api/v1/auth/login/mfa", json={"token": pending["token"], "code": code}
    )
    assert replay.status_code == 401
    assert replay.json() == {"detail": "That code was already used; wait for the next one."}
    records = [r async for r in platform.audit.iter_records()]
    assert any(
        r.action == "auth.login" and r.to_json()["details"].get("reason") == "replay"
        for r in records
    )


async def test_reading_the_audit_log_without_the_role_is_refused_and_recorded(
    client: httpx.AsyncClient, platform: Platform, admin: dict[str, str]
) -> None:
    secret = await enrolled(platform, "plain-admin", {Role.ADMIN})
    headers = await login(client, "plain-admin", PASSWORD, platform=platform, secret=secret)
    refused = await client.get("/api/v1/audit/export", headers=headers)
    assert refused.status_code == 403
    assert refused.json() == {"detail": "You need the audit.read permission for this."}
    records = (await client.get("/api/v1/audit?limit=1000", headers=admin)).json()
    denied = [r for r in records if r["action"] == "audit.read_denied"]
    assert [(d["actor"], d["target"], d["outcome"]) for d in denied] == [
        ("plain-admin", "/api/v1/audit/export", "failure")
    ]


async def test_team_api_grant_revoke_disable_and_the_last_admin(
    client: httpx.AsyncClient, platform: Platform, admin: dict[str, str]
) -> None:
    await platform.users.create("bob", PASSWORD, {Role.ANALYST})
    bob = await login(client, "bob", PASSWORD)
    granted = await client.put("/api/v1/users/bob/roles/script", headers=admin)
    assert granted.json()["roles"] == ["analyst", "script"]
    # Bob's session predates the role: it is now limited until he has a second factor.
    assert (await client.get("/api/v1/hosts", headers=bob)).status_code == 403
    revoked = await client.delete("/api/v1/users/bob/roles/script", headers=admin)
    assert revoked.json()["roles"] == ["analyst"]
    assert (await client.get("/api/v1/auth/whoami", headers=bob)).status_code == 401
    bad_role = await client.put("/api/v1/users/bob/roles/root", headers=admin)
    assert bad_role.status_code == 422
    last = await client.post("/api/v1/users/admin/disable", headers=admin)
    assert last.status_code == 409
    assert last.json() == {"detail": "'admin' is the last enabled admin; make another admin first."}
    external = await client.put(
        "/api/v1/users/bob/external",
        json={"external": True, "organisation": "Acme MDR", "access_expires_at": "2099-01-01"},
        headers=admin,
    )
    assert external.status_code == 200, external.text
    assert (external.json()["organisation"], external.json()["access_expires_at"][:10]) == (
        "Acme MDR",
        "2099-01-01",
    )
    listed = {u["username"]: u for u in (await client.get("/api/v1/users", headers=admin)).json()}
    assert listed["admin"]["mfa_enabled"] is True
    assert listed["bob"]["external"] is True
    disabled = await client.post("/api/v1/users/bob/disable", headers=admin)
    assert disabled.json()["disabled"] is True


async def test_settings_switches(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    assert (await client.get("/api/v1/settings", headers=admin)).json() == {
        "mfa_required_for_everyone": False,
        "external_access_suspended": False,
    }
    changed = await client.patch(
        "/api/v1/settings", json={"external_access_suspended": True}, headers=admin
    )
    assert changed.json()["external_access_suspended"] is True
    unknown = await client.patch("/api/v1/settings", json={"colour": "red"}, headers=admin)
    assert unknown.status_code == 422


async def test_throttled_login_is_429_with_retry_after(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    clock = FakeClock()
    platform.users = Users(
        platform.engine,
        platform.audit,
        session_policy(platform.settings),
        clock=clock,
        sealer=load_sealer(platform.settings.mfa_key),
    )
    body = {"username": "admin", "password": "not the password"}
    for _ in range(5):
        assert (await client.post("/api/v1/auth/login", json=body)).status_code == 401
    throttled = await client.post("/api/v1/auth/login", json=body)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "1"
    assert throttled.json() == {"detail": "Too many failed logins; try again in 1 second."}
    clock.advance(timedelta(seconds=1))
    assert (await client.post("/api/v1/auth/login", json=body)).status_code == 401


async def test_init_seals_the_admin_secret_with_a_private_key_file(
    platform: Platform, admin_secret: str
) -> None:
    key = platform.settings.mfa_key
    assert key.stat().st_mode & 0o777 == 0o600
    async with platform.engine.connect() as conn:
        stored = (
            await conn.execute(select(users.c.mfa_secret).where(users.c.username == "admin"))
        ).scalar_one()
    assert stored.startswith("v1:")
    assert admin_secret not in stored
    assert from_base32(admin_secret).hex() not in stored
