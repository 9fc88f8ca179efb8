import httpx

from tether.server.services.platform import Platform

from ..support import add_host


async def test_revoke_unknown_host_is_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post("/api/v1/hosts/no-such-host/revoke", headers=admin)
    assert response.status_code == 404
    assert response.json() == {"detail": "No host has the id or hostname 'no-such-host'."}


async def test_get_unknown_host_is_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get("/api/v1/hosts/no-such-host", headers=admin)
    assert response.status_code == 404


async def test_list_show_and_revoke(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    host_id = await add_host(platform.engine, "ws-9", segment="lab")
    listed = (await client.get("/api/v1/hosts", headers=admin)).json()
    assert [(h["id"], h["hostname"], h["segment"], h["online"]) for h in listed] == [
        (host_id, "ws-9", "lab", False)
    ]
    shown = await client.get("/api/v1/hosts/ws-9", headers=admin)
    assert shown.json()["id"] == host_id
    revoked = await client.post(f"/api/v1/hosts/{host_id}/revoke", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    again = await client.post(f"/api/v1/hosts/{host_id}/revoke", headers=admin)
    assert again.status_code == 409
    last = [r async for r in platform.audit.iter_records()][-1]
    assert (last.action, last.actor, last.target) == ("host.revoke", "admin", f"host:{host_id}")


async def test_ping_with_no_agents_connected(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    host_id = await add_host(platform.engine, "ws-offline")
    response = await client.post("/api/v1/hosts/ping", json={"hosts": [host_id]}, headers=admin)
    assert response.status_code == 200
    body = response.json()
    assert (body["asked"], body["answered"], body["failed"]) == (1, 0, {host_id: "offline"})
