import httpx

from tether.server.services.platform import Platform
from tether.server.services.users import LOGIN_REFUSED

from .conftest import unused_code


async def test_login_takes_two_steps_for_the_first_admin(
    client: httpx.AsyncClient, platform: Platform, admin_password: str, admin_secret: str
) -> None:
    response = await client.post(
        "/api/v1/auth/login",
        json={"username": "admin", "password": admin_password, "client": "cli"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["username"], body["roles"]) == ("admin", ["admin", "script"])
    assert (body["stage"], body["mfa_verified"]) == ("second_factor", False)
    pending = {"authorization": f"Bearer {body['token']}"}
    # The pending token is no session: it opens nothing but the second step.
    refused = await client.get("/api/v1/auth/whoami", headers=pending)
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Finish logging in: send your second-factor code first."}
    code = await unused_code(platform, "admin", admin_secret)
    response = await client.post(
        "/api/v1/auth/login/mfa", json={"token": body["token"], "code": code, "client": "cli"}
    )
    assert response.status_code == 200, response.text
    full = response.json()
    assert (full["stage"], full["mfa_verified"]) == ("full", True)
    assert full["token"] != body["token"]
    me = await client.get(
        "/api/v1/auth/whoami", headers={"authorization": f"Bearer {full['token']}"}
    )
    assert me.status_code == 200
    assert me.json()["username"] == "admin"
    assert me.json()["mfa_verified"] is True
    assert "audit.read" in me.json()["permissions"]
    steps = [
        (r.outcome, r.to_json()["details"]["factor"])
        async for r in platform.audit.iter_records()
        if r.action == "auth.login"
    ]
    assert steps == [("success", "password"), ("success", "totp")]


async def test_bad_logins_get_one_answer(
    client: httpx.AsyncClient, platform: Platform, admin_password: str
) -> None:
    for username, password in [("admin", "wrong password"), ("ghost", admin_password)]:
        response = await client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 401
        assert response.json() == {"detail": LOGIN_REFUSED}
        assert response.headers["www-authenticate"] == "Bearer"
    await platform.users.login_failures.flush(everything=True)
    failures = [r async for r in platform.audit.iter_records() if r.action.startswith("auth.login")]
    assert [(r.action, r.outcome, r.target) for r in failures] == [
        ("auth.login.failures", "failure", "127.0.0.1")
    ]
    assert failures[0].to_json()["details"]["accounts"] == ["admin", "ghost"]


async def test_logout_ends_the_session(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    headers = admin
    response = await client.post("/api/v1/auth/logout", headers=headers)
    assert response.status_code == 204
    response = await client.get("/api/v1/auth/whoami", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Your session is not valid; log in again."}


async def test_the_web_session_cookie_is_not_an_api_credential(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    # The API checks no CSRF token, so a cookie a browser would attach on its own opens nothing.
    token = admin["authorization"].removeprefix("Bearer ")
    response = await client.get(
        "/api/v1/auth/whoami", headers={"cookie": f"tether_session={token}"}
    )
    assert response.status_code == 401
    assert (await client.get("/api/v1/auth/whoami", headers=admin)).status_code == 200
