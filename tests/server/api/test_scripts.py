"""Script library routes and running a library script from POST /jobs: allowed, refused, not found."""

from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update

from tether.protocol import Role
from tether.server.services.platform import Platform
from tether.server.store.tables import segments

from ..support import add_host
from .conftest import PASSWORD as ENROLLED_PASSWORD
from .conftest import enrolled, login

PASSWORD = "a long enough password"
SOURCE = "from tether import script\nprint(script.params)\n"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"pid": {"type": "integer"}, "signal": {"type": "string", "default": "TERM"}},
    "required": ["pid"],
    "additionalProperties": False,
}
KILL = {"source": SOURCE, "description": "Kill a process", "parameters": SCHEMA}


async def user_headers(
    platform: Platform, client: httpx.AsyncClient, name: str, *roles: Role
) -> dict[str, str]:
    await platform.users.create(name, PASSWORD, roles=set(roles))
    return await login(client, name, PASSWORD)


async def test_save_read_history_and_delete_as_responder(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    created = await client.put("/api/v1/scripts/Process control", json=KILL, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"], body["new_version"], body["created_by"]) == (
        "Process control",
        1,
        True,
        "admin",
    )
    same = await client.put("/api/v1/scripts/Process control", json=KILL, headers=admin)
    assert (same.status_code, same.json()["version"], same.json()["new_version"]) == (
        200,
        1,
        False,
    )
    changed = {**KILL, "source": SOURCE + "# v2\n", "parameters": None}
    second = await client.put("/api/v1/scripts/Process control", json=changed, headers=admin)
    assert (second.status_code, second.json()["version"]) == (201, 2)
    # No schema sent: the previous version's is kept.
    assert second.json()["parameters"] == SCHEMA

    latest = (await client.get("/api/v1/scripts/Process control", headers=admin)).json()
    assert set(latest) == {
        "name",
        "version",
        "description",
        "parameters",
        "source",
        "sha256",
        "created_by",
        "created_at",
    }
    assert (latest["version"], latest["source"]) == (2, SOURCE + "# v2\n")
    first = await client.get("/api/v1/scripts/Process control/versions/1", headers=admin)
    assert first.json()["source"] == SOURCE
    versions = (await client.get("/api/v1/scripts/Process control/versions", headers=admin)).json()
    assert [v["version"] for v in versions] == [1, 2]
    assert "source" not in versions[0]
    listed = (await client.get("/api/v1/scripts", headers=admin)).json()
    assert [(s["name"], s["version"]) for s in listed] == [("Process control", 2)]
    assert "source" not in listed[0]

    deleted = await client.delete("/api/v1/scripts/Process control", headers=admin)
    assert deleted.status_code == 204
    assert (await client.get("/api/v1/scripts", headers=admin)).json() == []
    gone = await client.get("/api/v1/scripts/Process control", headers=admin)
    assert gone.status_code == 404
    assert gone.json() == {"detail": "No script is named 'Process control'."}
    records = [r.action async for r in platform.audit.iter_records()]
    assert records.count("script.save") == 2
    assert records.count("script.delete") == 1


async def test_not_found_on_every_route(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await client.put("/api/v1/scripts/kill", json=KILL, headers=admin)
    for method, path, detail in [
        ("GET", "/api/v1/scripts/ghost", "No script is named 'ghost'."),
        ("GET", "/api/v1/scripts/ghost/versions", "No script is named 'ghost'."),
        ("GET", "/api/v1/scripts/ghost/versions/1", "No script is named 'ghost'."),
        ("GET", "/api/v1/scripts/kill/versions/2", "Script 'kill' has no version 2."),
        ("DELETE", "/api/v1/scripts/ghost", "No script is named 'ghost'."),
    ]:
        response = await client.request(method, path, headers=admin)
        assert (response.status_code, response.json()) == (404, {"detail": detail}), path
    zero = await client.get("/api/v1/scripts/kill/versions/0", headers=admin)
    assert zero.status_code == 422


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {**KILL, "source": "def (:\n"},
            "The script has a syntax error on line 1: invalid syntax.",
        ),
        ({**KILL, "parameters": {"type": "object"}}, 'needs "properties"'),
        ({**KILL, "description": "d" * 2001}, "Invalid description"),
        ({"description": "no source"}, "Invalid source"),
    ],
)
async def test_refused_saves_are_422_in_one_sentence(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any], detail: str
) -> None:
    response = await client.put("/api/v1/scripts/kill", json=body, headers=admin)
    assert response.status_code == 422
    assert detail in response.json()["detail"]
    assert (await client.get("/api/v1/scripts", headers=admin)).json() == []


async def test_a_name_with_control_characters_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.put("/api/v1/scripts/%1B%5B2J", json=KILL, headers=admin)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("A script name is 1 to 128 printable characters")
    # A slash, even encoded, never reaches the library as part of a name.
    encoded = await client.put("/api/v1/scripts/..%2Fx", json=KILL, headers=admin)
    assert encoded.status_code == 404
    assert (await client.get("/api/v1/scripts", headers=admin)).json() == []


async def test_analysts_read_but_cannot_change_and_admins_do_neither(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    await client.put("/api/v1/scripts/kill", json=KILL, headers=admin)
    analyst = await user_headers(platform, client, "ana", Role.ANALYST)
    assert (await client.get("/api/v1/scripts/kill", headers=analyst)).json()["source"] == SOURCE
    for method, body in [("PUT", {**KILL, "source": "print(1)\n"}), ("DELETE", None)]:
        response = await client.request(method, "/api/v1/scripts/kill", json=body, headers=analyst)
        assert response.status_code == 403
        assert response.json() == {"detail": "You need the active_response permission for this."}
    secret = await enrolled(platform, "adm", {Role.ADMIN})
    plain_admin = await login(client, "adm", ENROLLED_PASSWORD, platform=platform, secret=secret)
    read = await client.get("/api/v1/scripts", headers=plain_admin)
    assert read.json() == {"detail": "You need the results.read permission for this."}
    assert (await client.delete("/api/v1/scripts/kill", headers=plain_admin)).status_code == 403
    assert (await client.get("/api/v1/scripts/kill/versions", headers=admin)).json()[0][
        "version"
    ] == 1
    assert len(await platform.scripts.history("kill")) == 1


# Until the declaration of script.run lands in tether.protocol, the jobs tests declare a stand-in
# with the same argument names.
class _RunArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(max_length=1024 * 1024)
    params: dict[str, Any] = Field(default_factory=dict)
    name: str = ""


async def _host_in_enabled_segment(platform: Platform) -> str:
    host = await add_host(platform.engine, "ws-1", segment="lab")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "lab").values(active_response=True)
        )
    return host


async def test_running_by_name_submits_the_library_source(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    host = await _host_in_enabled_segment(platform)
    await client.put("/api/v1/scripts/kill", json=KILL, headers=admin)
    await client.put("/api/v1/scripts/kill", json={**KILL, "source": "print(2)\n"}, headers=admin)
    submitted = await client.post(
        "/api/v1/jobs",
        json={
            "action": "script.run",
            "hosts": [host],
            "script": {"name": "kill", "version": 1},
            "args": {"params": {"pid": 4242}},
        },
        headers=admin,
    )
    assert submitted.status_code == 201, submitted.text
    (job,) = submitted.json()["jobs"]
    stored = (await client.get(f"/api/v1/jobs/{job['id']}", headers=admin)).json()
    # The declared model fills in the output limits it defaults.
    assert stored["args"] == {
        "source": SOURCE,
        "params": {"pid": 4242, "signal": "TERM"},
        "name": "kill v1",
        "max_output_bytes": 8 * 1024 * 1024,
        "max_rows": 10_000,
    }
    (record,) = [r async for r in platform.audit.iter_records() if r.action == "job.submit"]
    assert record.to_json()["details"]["args"]["source"] == SOURCE

    latest = await client.post(
        "/api/v1/jobs",
        json={
            "action": "script.run",
            "hosts": [host],
            "script": {"name": "kill"},
            "args": {"params": {"pid": 1}},
        },
        headers=admin,
    )
    (job,) = latest.json()["jobs"]
    stored = (await client.get(f"/api/v1/jobs/{job['id']}", headers=admin)).json()
    assert (stored["args"]["source"], stored["args"]["name"]) == ("print(2)\n", "kill v2")


@pytest.mark.parametrize(
    ("submission", "status", "detail"),
    [
        ({"args": {"params": {"pid": "x"}}}, 422, "Parameter 'pid' must be an integer."),
        ({"args": {"params": {}}}, 422, "Parameter 'pid' is required."),
        ({"args": {"params": {"pid": 1, "x": 2}}}, 422, "Parameter 'x' is not one this script"),
        ({"args": {"source": "print(1)", "params": {"pid": 1}}}, 422, "not both"),
        ({"action": "system.noop"}, 422, "only be submitted with the script.run action"),
        ({"script": {"name": "ghost"}}, 404, "No script is named 'ghost'."),
        ({"script": {"name": "kill", "version": 7}}, 404, "Script 'kill' has no version 7."),
    ],
)
async def test_running_by_name_refusals(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    submission: dict[str, Any],
    status: int,
    detail: str,
) -> None:
    host = await _host_in_enabled_segment(platform)
    await client.put("/api/v1/scripts/kill", json=KILL, headers=admin)
    body = {"action": "script.run", "hosts": [host], "script": {"name": "kill"}} | submission
    response = await client.post("/api/v1/jobs", json=body, headers=admin)
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert (await client.get("/api/v1/jobs", headers=admin)).json() == []


async def test_an_analyst_cannot_run_a_library_script(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    host = await _host_in_enabled_segment(platform)
    await client.put("/api/v1/scripts/kill", json=KILL, headers=admin)
    analyst = await user_headers(platform, client, "ana", Role.ANALYST)
    response = await client.post(
        "/api/v1/jobs",
        json={"action": "script.run", "hosts": [host], "script": {"name": "kill"}},
        headers=analyst,
    )
    assert response.status_code == 403
    assert "Active Response tier" in response.json()["detail"]
