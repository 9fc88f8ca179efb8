"""Segment routes, host moves and response access over HTTP: allowed, refused and not found."""

import httpx
import pytest

from tether.protocol import Role
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.access import NO_PERMISSION
from tether.server.services.platform import Platform
from tether.server.services.users import enroll_first

from ..support import add_host
from .conftest import login

PASSWORD = "a long enough password"


async def user_headers(
    platform: Platform, client: httpx.AsyncClient, name: str, *roles: Role
) -> dict[str, str]:
    await platform.users.create(name, PASSWORD, roles=set(roles))
    return await login(client, name, PASSWORD)


async def test_segment_lifecycle_as_admin(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    created = await client.post(
        "/api/v1/segments", json={"name": "lab net", "active_response": True}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert {k: created.json()[k] for k in ("name", "active_response", "hosts")} == {
        "name": "lab net",
        "active_response": True,
        "hosts": 0,
    }
    await add_host(platform.engine, "ws", segment="lab net")
    changed = await client.patch(
        "/api/v1/segments/lab%20net",
        json={"name": "research", "active_response": False},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["active_response"], changed.json()["hosts"]) == (
        "research",
        False,
        1,
    )
    listed = (await client.get("/api/v1/segments", headers=admin)).json()
    # `tether server init` made the default segment.
    assert [(s["name"], s["hosts"]) for s in listed] == [("default", 0), ("research", 1)]
    refused = await client.delete("/api/v1/segments/research", headers=admin)
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": "Segment 'research' still holds 1 host; "
        "move them to another segment before deleting it."
    }
    actions = [r.action async for r in platform.audit.iter_records()]
    assert actions[-3:] == ["segment.create", "segment.rename", "segment.active_response"]


async def test_delete_empty_segment(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await client.post("/api/v1/segments", json={"name": "empty"}, headers=admin)
    response = await client.delete("/api/v1/segments/empty", headers=admin)
    assert response.status_code == 204
    assert response.content == b""
    listed = (await client.get("/api/v1/segments", headers=admin)).json()
    assert [s["name"] for s in listed] == ["default"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("POST", "/api/v1/segments", {"name": "a/b"}, 422, None),
        ("PATCH", "/api/v1/segments/nope", {"active_response": True}, 404, None),
        ("PATCH", "/api/v1/segments/nope", {}, 422, None),
        ("DELETE", "/api/v1/segments/nope", None, 404, "No segment is named 'nope'."),
        ("POST", "/api/v1/hosts/nope/move", {"segment": "default"}, 404, None),
        ("GET", "/api/v1/hosts/nope/response-access", None, 404, None),
    ],
)
async def test_refusals_and_not_found(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    method: str,
    path: str,
    body: dict[str, object] | None,
    status: int,
    detail: str | None,
) -> None:
    response = await client.request(method, path, json=body, headers=admin)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)
    if detail is not None:
        assert response.json() == {"detail": detail}


async def test_duplicate_segment_is_409(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await client.post("/api/v1/segments", json={"name": "lab"}, headers=admin)
    again = await client.post("/api/v1/segments", json={"name": "lab"}, headers=admin)
    assert again.status_code == 409
    assert again.json() == {"detail": "A segment named 'lab' already exists."}


async def test_analyst_reads_segments_but_cannot_change_them(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    headers = await user_headers(platform, client, "ana", Role.ANALYST)
    assert (await client.get("/api/v1/segments", headers=headers)).status_code == 200
    for method, path, body in [
        ("POST", "/api/v1/segments", {"name": "x"}),
        ("PATCH", "/api/v1/segments/default", {"active_response": True}),
        ("DELETE", "/api/v1/segments/default", None),
    ]:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403
        assert response.json() == {"detail": "You need the segments.manage permission for this."}
    moved = await client.post("/api/v1/hosts/x/move", json={"segment": "y"}, headers=headers)
    assert moved.json() == {"detail": "You need the hosts.manage permission for this."}


async def test_move_host(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    host_id = await add_host(platform.engine, "ws", segment="lab")
    missing = await client.post(
        f"/api/v1/hosts/{host_id}/move", json={"segment": "nowhere"}, headers=admin
    )
    assert missing.status_code == 404
    assert missing.json() == {"detail": "No segment is named 'nowhere'."}
    await client.post("/api/v1/segments", json={"name": "servers"}, headers=admin)
    moved = await client.post("/api/v1/hosts/ws/move", json={"segment": "servers"}, headers=admin)
    assert moved.status_code == 200
    assert (moved.json()["id"], moved.json()["segment"]) == (host_id, "servers")
    assert moved.json()["response_disabled_locally"] is False
    last = [r async for r in platform.audit.iter_records()][-1]
    assert (last.action, last.target) == ("host.move", f"host:{host_id}")


@pytest.mark.parametrize(
    ("roles", "detail"),
    [
        ((Role.ANALYST,), NO_PERMISSION),
        # An admin or responder who has not enrolled a second factor may do nothing but
        # enroll one (docs/adr/0034).
        ((Role.ADMIN,), enroll_first("someone")),
        ((Role.SCRIPT,), enroll_first("someone")),
        ((Role.ADMIN, Role.SCRIPT), enroll_first("someone")),
    ],
)
async def test_response_access_refuses_with_the_reason(
    client: httpx.AsyncClient, platform: Platform, roles: tuple[Role, ...], detail: str
) -> None:
    await add_host(platform.engine, "ws", segment="lab")
    await platform.segments.set_active_response("lab", True, actor="t", source="t")
    headers = await user_headers(platform, client, "someone", *roles)
    response = await client.get("/api/v1/hosts/ws/response-access", headers=headers)
    assert response.status_code == 403
    assert response.json() == {"detail": detail}


@pytest.fixture
async def verified_responder(platform: Platform, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A client logged in as a responder who passed the second factor, both steps for real."""
    user = await platform.users.create("resp", PASSWORD, roles={Role.SCRIPT})
    secret = new_secret()
    await platform.users.mfa.enroll_directly(user.id, secret)
    headers = await login(client, "resp", PASSWORD, platform=platform, secret=to_base32(secret))
    client.headers.update(headers)
    return client


async def test_response_access_follows_the_segment_switch(
    verified_responder: httpx.AsyncClient, platform: Platform
) -> None:
    await add_host(platform.engine, "ws", segment="lab")
    off = await verified_responder.get("/api/v1/hosts/ws/response-access")
    assert off.status_code == 403
    assert off.json() == {
        "detail": "Active Response is off in segment lab, so response actions on ws are refused."
    }
    await platform.segments.set_active_response("lab", True, actor="t", source="t")
    on = await verified_responder.get("/api/v1/hosts/ws/response-access")
    assert on.status_code == 200
    assert on.json() == {"allowed": True}
