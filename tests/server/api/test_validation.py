"""Bad requests get 422 with one plain sentence naming the problem, never a structure."""

from typing import Any

import httpx
import pytest


def one_sentence(detail: Any) -> str:
    assert isinstance(detail, str), detail
    assert detail.startswith("Invalid ")
    assert detail.endswith(".")
    assert "\n" not in detail
    return detail


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "", "password": "x"}, "username"),
        ({"username": "admin"}, "password"),
        ({"username": "admin", "password": "x", "client": "browser"}, "client"),
        ({"username": "admin", "password": "x", "extra": 1}, "extra"),
    ],
)
async def test_login_validation(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/auth/login", json=body)
    assert response.status_code == 422
    assert field in one_sentence(response.json()["detail"])


async def test_body_that_is_not_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    one_sentence(response.json()["detail"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"uses": 0}, "uses"),
        ({"uses": 100_001}, "uses"),
        ({"expires_in_seconds": 59}, "expires_in_seconds"),
        ({"segment": ""}, "segment"),
    ],
)
async def test_token_validation(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/enrollment-tokens", json=body, headers=admin)
    assert response.status_code == 422
    assert field in one_sentence(response.json()["detail"])


async def test_service_refusal_is_also_one_sentence(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        "/api/v1/enrollment-tokens", json={"segment": "bad/name"}, headers=admin
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": "A segment name is 1 to 64 letters, digits, spaces, dots, dashes or underscores."
    }


async def test_query_validation(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get("/api/v1/audit", params={"limit": 0}, headers=admin)
    assert response.status_code == 422
    assert "limit" in one_sentence(response.json()["detail"])
