import httpx

from tether.server.services.platform import Platform
from tether.server.services.users import LOGIN_REFUSED

from .conftest import login


async def test_login_and_whoami(client: httpx.AsyncClient, admin_password: str) -> None:
    response = await client.post(
        "/api/v1/auth/login",
        json={"username": "admin", "password": admin_password, "client": "cli"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["username"], body["roles"]) == ("admin", ["admin"])
    assert len(body["token"]) >= 40
    me = await client.get(
        "/api/v1/auth/whoami", headers={"authorization": f"Bearer {body['token']}"}
    )
    assert me.status_code == 200
    assert me.json()["username"] == "admin"
    assert "audit.read" in me.json()["permissions"]


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
    failures = [r async for r in platform.audit.iter_records() if r.action == "auth.login"]
    assert [(r.actor, r.outcome) for r in failures] == [
        ("admin", "failure"),
        ("ghost", "failure"),
    ]
    assert all(r.source.startswith("127.0.0.1") for r in failures)


async def test_logout_ends_the_session(client: httpx.AsyncClient, admin_password: str) -> None:
    headers = await login(client, "admin", admin_password)
    response = await client.post("/api/v1/auth/logout", headers=headers)
    assert response.status_code == 204
    response = await client.get("/api/v1/auth/whoami", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Your session is not valid; log in again."}


async def test_session_cookie_is_accepted(client: httpx.AsyncClient, admin_password: str) -> None:
    headers = await login(client, "admin", admin_password)
    token = headers["authorization"].removeprefix("Bearer ")
    response = await client.get(
        "/api/v1/auth/whoami", headers={"cookie": f"tether_session={token}"}
    )
    assert response.status_code == 200
